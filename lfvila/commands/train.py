"""lfvila train: pre-train LF-VILA from shards, in one process or under torchrun.

Examples:
  lfvila train --config train/tiny.yaml --set data.train_shards=corpus/shards/train-{000000..000003}.tar
  lfvila train --config train/stage1_small.yaml --resume auto
  torchrun --nproc-per-node 8 -m lfvila.cli train --config train/stage1_paper.yaml --resume auto
  lfvila train --config train/stage2_paper.yaml --set trainer.init_from=runs/stage1/checkpoints/step_00100000
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="training recipe (YAML), e.g. train/stage1_paper.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config value, e.g. --set trainer.max_steps=100 (repeatable)")
    parser.add_argument("--resume", default=None, metavar="auto|CKPT",
                        help="'auto': continue from the newest complete checkpoint in trainer.out_dir "
                             "(start fresh when there is none); or a checkpoint directory")


def run(args) -> int:
    from lfvila.config import load_config
    from lfvila.trainer.config import TrainConfig
    from lfvila.trainer.loop import train
    from lfvila.trainer.parallel import teardown_distributed

    cfg = load_config(TrainConfig, args.config, args.overrides)
    try:
        train(cfg, resume=args.resume)
    finally:
        teardown_distributed()
    return 0
