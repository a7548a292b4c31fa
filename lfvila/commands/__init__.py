"""Subcommands of the lfvila console script: each is add_arguments(parser) + run(args)."""
