"""lfvila preview: a contact sheet of one sample's frames with their times, and its sentences on a timeline.

The frame borders and the timeline are coloured by sentence, so you can check by eye that each
sentence's frames show what it says.

Examples:
  lfvila preview corpus --key KEY -o sheet.png
  lfvila preview corpus -o sheet.png            # the first sample of the index
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("out", help="corpus directory (the --out of lfvila build)")
    parser.add_argument("--key", default=None, help="sample key (default: the first sample in the index)")
    parser.add_argument("-o", "--output", default="sheet.png", help="PNG to write (default: sheet.png)")
    parser.add_argument("--max-frames", type=int, default=60, help="show at most this many frames, evenly spaced")
    parser.add_argument("--columns", type=int, default=10, help="frames per row")


def run(args) -> int:
    from pathlib import Path

    from lfvila.corpus_dir import missing_sample_reason, require_corpus, written_keys
    from lfvila.errors import UserError
    from lfvila.viz.preview import preview_sample

    out = require_corpus(args.out)
    key = args.key
    if key is None:
        keys = [k for k, _, _ in written_keys(out)]
        if not keys:
            raise UserError(f"{out} has no written samples yet (no shards/index.parquet); build its shards first")
        key = keys[0]
        print(f"no --key: drawing the first of {len(keys)} samples; others: {', '.join(keys[1:6])}"
              f"{' ...' if len(keys) > 6 else ''} (lfvila inspect {out} --keys lists all)")
    try:
        path = preview_sample(out, key, Path(args.output), max_frames=args.max_frames, columns=args.columns)
    except KeyError:
        raise UserError(missing_sample_reason(out, key)) from None
    print(f"{key}: {path}")
    return 0
