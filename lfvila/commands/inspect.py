"""lfvila inspect: summarise a built corpus (samples, hours, shards, bytes, rejects by reason, per split).

Examples:
  lfvila inspect corpus
  lfvila inspect corpus --json
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("out", help="corpus directory (the --out of lfvila build)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args) -> int:
    import json
    from pathlib import Path

    from lfvila.viz.summary import format_summary, summarize

    try:
        summary = summarize(Path(args.out))
    except FileNotFoundError as e:
        raise SystemExit(f"lfvila inspect: {e}") from None
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_summary(summary))
    return 0
