"""lfvila train: pre-train LF-VILA from shards, in one process or under torchrun.

Before the model is built, the shard patterns are expanded and checked: found / missing shards
and sample counts are reported, and the run stops (exit 2) when a split it needs has no readable
shard. Shard specs are brace patterns (train-{000000..000009}.tar, several joined by '::') or
lists; shell globs (*) are not supported. A short summary is printed at the start (config, world
size, model size, data) and at the end (steps, final losses, checkpoint, eval results); every log
line also goes to OUT_DIR/train.log. Ctrl-C stops cleanly, naming the last checkpoint and the
command that continues the run (--resume auto).

Examples:
  lfvila train --config train/tiny.yaml --set data.train_shards=corpus/shards/train-{000000..000003}.tar
  lfvila train --config train/stage1_small.yaml --resume auto
  torchrun --nproc-per-node 8 -m lfvila.cli train --config train/stage1_paper.yaml --resume auto
  lfvila train --config train/stage2_paper.yaml --set trainer.init_from=runs/stage1/checkpoints/step_00100000
"""
from __future__ import annotations

import logging

from lfvila.resources import recipe_help, resolve_recipe

log = logging.getLogger("lfvila.train")


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help=recipe_help("train"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config value, e.g. --set trainer.max_steps=100 (repeatable)")
    parser.add_argument("--resume", default=None, metavar="auto|CKPT",
                        help="'auto': continue from the newest complete checkpoint in trainer.out_dir "
                             "(start fresh when there is none); or a checkpoint directory (default: start fresh)")


def _continue_command(args, world_size: int) -> str:
    import shlex

    words = ["train", "--config", args.config]
    for override in args.overrides:
        words += ["--set", override]
    words += ["--resume", "auto"]
    prefix = f"torchrun --nproc-per-node {world_size} -m lfvila.cli" if world_size > 1 else "lfvila"
    return prefix + " " + " ".join(shlex.quote(w) for w in words)


def _log_to_file(path) -> logging.Handler:
    """Send every log record to ``path`` too (appended: a resumed run continues the same log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.getLogger().addHandler(handler)
    return handler


def run(args) -> int:
    import os
    import sys

    from lfvila.config import load_config
    from lfvila.data.shardcheck import check_shards
    from lfvila.errors import ConfigError, InputError
    from lfvila.trainer.checkpoint import newest_checkpoint
    from lfvila.trainer.config import TrainConfig
    from lfvila.trainer.loop import Trainer
    from lfvila.trainer.parallel import teardown_distributed
    from lfvila.trainer.summary import LOG_NAME, end_lines, start_lines

    recipe = resolve_recipe(args.config, "train")
    cfg = load_config(TrainConfig, recipe, args.overrides)
    checks = [check_shards(cfg.data.train_shards, "train")]
    if cfg.data.val_shards:
        checks.append(check_shards(cfg.data.val_shards, "val"))
    for check in checks:
        if not check.urls:
            raise ConfigError(f"data.{check.split}_shards is empty: name the shards with --set "
                              f"data.{check.split}_shards=PATTERN")
        if check.usable == 0:
            raise InputError(f"no readable {check.split} shard in data.{check.split}_shards="
                             f"{check.spec!r}: {check.summary()}")
    is_main = int(os.environ.get("RANK", 0)) == 0
    handler = None
    try:
        try:
            trainer = Trainer(cfg, resume=args.resume)
        except KeyboardInterrupt:
            print("lfvila train: interrupted while building the model and loader; nothing was trained",
                  file=sys.stderr)
            return 130
        if is_main:
            handler = _log_to_file(trainer.out / LOG_NAME)
            for line in start_lines(trainer, recipe, len(args.overrides), checks):
                log.info(line)
            for check in checks:
                if check.usable < len(check.urls):
                    log.warning("data %s: only %d of %d shards are readable", check.split, check.usable,
                                len(check.urls))
        try:
            metrics = trainer.fit()
        except KeyboardInterrupt:
            last = newest_checkpoint(trainer.ckpt_root)
            done = f"last checkpoint {last}" if last is not None else "no checkpoint written yet"
            message = (f"lfvila train: interrupted at step {trainer.step}/{cfg.trainer.max_steps}; {done}; "
                       f"continue with: {_continue_command(args, trainer.ctx.world_size)}")
            if is_main:
                log.warning("%s", message)
            return 130
        if is_main:
            for line in end_lines(trainer, metrics, newest_checkpoint(trainer.ckpt_root)):
                log.info(line)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        teardown_distributed()
    return 0
