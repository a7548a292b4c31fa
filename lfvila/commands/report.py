"""lfvila report: PNG plots (long-video durations, sentences per video, words per sentence, rejects by
reason) and a markdown summary of a built corpus.

Examples:
  lfvila report corpus                 # writes corpus/report/report.md and its plots
  lfvila report corpus -o my_report/
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("out", help="corpus directory (the --out of lfvila build)")
    parser.add_argument("-o", "--output", default=None, help="report directory (default: OUT/report)")


def run(args) -> int:
    from pathlib import Path

    from lfvila.corpus_dir import require_corpus
    from lfvila.viz.report import write_report

    path = write_report(require_corpus(args.out), Path(args.output) if args.output else None)
    print(f"report: {path}")
    return 0
