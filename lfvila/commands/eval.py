"""lfvila eval: evaluate a checkpoint on held-out shards (one process or under torchrun).

Prints and writes to CKPT/eval-<name>.json: paragraph-to-video and video-to-paragraph
R@1/5/10 and median rank, within-video clip-to-sentence alignment accuracy and held-out
losses (and stage-2 accuracies for a stage-2 checkpoint), each next to its chance level.

Example:
  lfvila eval --checkpoint runs/tiny/checkpoints/step_00000200 --data 'corpus/shards/val-{000000..000001}.tar'
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint directory (step_NNNNNNNN)")
    parser.add_argument("--data", default=None, metavar="URLS",
                        help="val shard URLs (brace pattern or '::'-joined); default: the checkpoint's data.val_shards")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a value of the checkpoint's config, e.g. --set data.batch_size=8")
    parser.add_argument("--max-batches", type=int, default=None, help="stop after this many batches per rank")
    parser.add_argument("--out", default=None, help="metrics JSON path (default CKPT/eval-<name>.json)")


def run(args) -> int:
    import json
    from pathlib import Path

    from lfvila.trainer.evaluate import evaluate_checkpoint
    from lfvila.trainer.parallel import teardown_distributed

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.val_shards={json.dumps(args.data)}")
    try:
        metrics, path = evaluate_checkpoint(Path(args.checkpoint), overrides=overrides,
                                            max_batches=args.max_batches,
                                            out=Path(args.out) if args.out else None)
    finally:
        teardown_distributed()
    if path is not None:
        print(json.dumps(metrics, indent=2))
        print(f"written to {path}")
    return 0
