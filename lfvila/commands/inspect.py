"""lfvila inspect: summarise a built corpus (samples, hours, shards, bytes, rejects by reason, per split).

Examples:
  lfvila inspect corpus
  lfvila inspect corpus --json
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("out", help="corpus directory (the --out of lfvila build)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--keys", action="store_true",
                        help="list the written samples instead: key, split, shard (tab-separated)")


def run(args) -> int:
    import json

    from lfvila.corpus_dir import require_corpus, written_keys
    from lfvila.viz.summary import format_corpus_summary, summarize

    out = require_corpus(args.out)
    if args.keys:
        for key, split, shard in written_keys(out):
            print(f"{key}\t{split}\t{shard}")
        return 0
    summary = summarize(out)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_corpus_summary(summary))
    return 0
