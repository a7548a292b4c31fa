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

    from lfvila.viz.corpus import CorpusPaths, read_table
    from lfvila.viz.preview import preview_sample

    key = args.key
    if key is None:
        index = read_table(CorpusPaths(Path(args.out)).index, ["key"])
        if index is None or index.num_rows == 0:
            raise SystemExit(f"lfvila preview: {args.out} has no shards/index.parquet; pass --key")
        key = index.column("key")[0].as_py()
    try:
        path = preview_sample(Path(args.out), key, Path(args.output), max_frames=args.max_frames,
                              columns=args.columns)
    except (KeyError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"lfvila preview: {e.args[0] if e.args else e}") from None
    print(f"{key}: {path}")
    return 0
