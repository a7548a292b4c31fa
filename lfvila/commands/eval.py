"""lfvila eval: evaluate a checkpoint on held-out shards (one process or under torchrun).

Prints, as the demo does, a table of paragraph-to-video and video-to-paragraph R@1/5/10 and
median rank, within-video clip-to-sentence alignment accuracy and held-out losses (and stage-2
accuracies for a stage-2 checkpoint), each next to its chance level, rounded to 2 decimals.
Writes them to CKPT/eval-<hash>.json with the checkpoint and the data evaluated (never over the
training run's own CKPT/eval.json). --checkpoint may name a run directory: its newest
intact checkpoint is evaluated. The val shards are --data, else --config RECIPE's
data.val_shards, else the checkpoint's own; a pipe: (command) URL is used only when it comes
from the user's command line or own config file, never from a checkpoint's config.yaml. No
readable shard is an error (exit 2), and so is evaluating 0 samples (exit 1).

--task retrieval evaluates paragraph-to-video retrieval over the whole test set instead
(lfvila.eval.retrieval): each video read whole (data.sampling=whole_video), text-to-video and
video-to-text R@1/5/10/50, median and mean rank as the LF-VILA release computes them; writes
DIR/retrieval.json, DIR/similarity.npy (texts x videos) and DIR/keys.json (their order). Works on
a stage-1 checkpoint (zero-shot) or a retrieval fine-tuned one, in one process or under torchrun.

--shuffle-test (with either task) evaluates the same data a second time with each sample's clips
shuffled in time (lfvila.eval.shuffle: clip groups reordered by a seeded derangement, sentences in
place) and prints and writes both passes and the drop (in order minus shuffled):
OUT_STEM.shuffle_test.json beside the metrics file, DIR/shuffle_test.json with --task retrieval.

Example:
  lfvila eval --checkpoint runs/tiny --data 'corpus/shards/val-{000000..000001}.tar'
  lfvila eval --checkpoint runs/tiny/checkpoints/step_00000200
  lfvila eval --checkpoint runs/tiny --config train/my_run.yaml
  lfvila eval --task retrieval --checkpoint runs/tiny --data 'anet/shards/val-{000000..000004}.tar' --out anet_zs
  lfvila eval --checkpoint runs/tiny --data 'corpus/shards/val-{000000..000001}.tar' --shuffle-test
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--task", choices=("pretrain", "retrieval"), default=None,
                        help="pretrain: the held-out pre-training figures; retrieval: paragraph-to-video retrieval "
                             "over the whole test set (default: the checkpoint's own task.name)")
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint directory (step_NNNNNNNN), or a run directory: its newest intact checkpoint")
    parser.add_argument("--data", default=None, metavar="URLS",
                        help="val shard URLs (brace pattern or '::'-joined); default: --config's data.val_shards, "
                             "else the checkpoint's (never a pipe: command from there)")
    parser.add_argument("--config", default=None, metavar="RECIPE",
                        help="take the val shards from this YAML's data.val_shards (e.g. the recipe the run was "
                             "trained with) instead of the checkpoint's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a value of the checkpoint's config, e.g. --set data.batch_size=8")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="stop after this many batches per rank (default: every sample)")
    parser.add_argument("--shuffle-test", action="store_true",
                        help="also evaluate with each sample's clips shuffled in time (the shuffle test: clips "
                             "reordered, sentences in place) and report both and the drop; written to "
                             "OUT_STEM.shuffle_test.json (--task retrieval: DIR/shuffle_test.json)")
    parser.add_argument("--shuffle-seed", type=int, default=0, metavar="N",
                        help="seed of the shuffle test's clip orders (default 0; recorded in the output)")
    parser.add_argument("--out", default=None,
                        help="metrics JSON path (default CKPT/eval-<hash>.json); with --task retrieval a directory "
                             "(default CKPT/retrieval-<hash>)")


def _recipe_val_shards(path: str) -> str | list[str]:
    """``data.val_shards`` of the user's own YAML ``path``."""
    import yaml

    from lfvila.errors import ConfigError

    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} cannot be read as YAML: {exc}") from None
    spec = ((recipe or {}).get("data") or {}).get("val_shards") if isinstance(recipe, dict) else None
    if not spec:
        raise ConfigError(f"config file {path} sets no data.val_shards")
    return spec


def run(args) -> int:
    import sys
    from pathlib import Path

    from lfvila.data.shardcheck import check_shards
    from lfvila.errors import ConfigError, InputError
    from lfvila.trainer.checkpoint import resolve_checkpoint
    from lfvila.eval.shuffle import shuffle_test_path
    from lfvila.trainer.evaluate import checkpoint_eval_config, evaluate_checkpoint, metric_table
    from lfvila.trainer.parallel import teardown_distributed

    checkpoint = resolve_checkpoint(args.checkpoint)
    # The data comes from the user (--data, --config, --set); the checkpoint's own val shards only
    # when they run no command (checkpoint_eval_config refuses pipe: from there).
    val_shards = args.data or (_recipe_val_shards(args.config) if args.config else None)
    overrides = list(args.overrides)
    cfg = checkpoint_eval_config(checkpoint, overrides=overrides, val_shards=val_shards)
    spec = cfg.data.val_shards
    if not spec:
        raise ConfigError(f"{checkpoint}: no val shards in its config; pass --data URLS")
    check = check_shards(spec, "val")
    if check.usable == 0:
        raise InputError(f"no readable val shard in {spec!r}: {check.summary()}")
    if args.task == "pretrain" and cfg.task.name == "retrieval":
        raise ConfigError(f"{checkpoint} is a retrieval fine-tune: its figures are --task retrieval's "
                          "(the pre-training figures need the pre-training window samples)")
    if (args.task or cfg.task.name) == "retrieval":
        return run_retrieval(args, checkpoint, spec, check, val_shards)
    try:
        metrics, path, shuffle_record = evaluate_checkpoint(
            checkpoint, overrides=overrides, max_batches=args.max_batches, out=Path(args.out) if args.out else None,
            val_shards=val_shards, shuffle_seed=args.shuffle_seed if args.shuffle_test else None)
    finally:
        teardown_distributed()
    if metrics.get("n_samples", 0) == 0:
        # not a usage error (exit 2): the data was there, but nothing in it could be evaluated
        print(f"lfvila eval: error: 0 samples evaluated from {spec!r} ({check.summary()}): every sample was "
              "skipped by the loader (see the warnings above)", file=sys.stderr)
        return 1
    if path is not None:
        print(f"checkpoint {checkpoint} (step {metrics.get('step')}), {int(metrics['n_samples'])} samples "
              f"from {spec}")
        print("\n".join(metric_table([("value", metrics)])))
        print("(recall and accuracy in %, median rank in positions; lower medr is better)")
        print(f"written to {path}")
        if shuffle_record is not None:
            print_shuffle_test(shuffle_record, shuffle_test_path(path))
    return 0


def print_shuffle_test(record: dict, path) -> None:
    from lfvila.eval.shuffle import shuffle_table

    print(f"\nshuffle test (clips shuffled in time, seed {record['shuffle_seed']}): in order, shuffled, "
          "drop = in order - shuffled")
    print("\n".join(shuffle_table(record)))
    print("(a drop in alignment: the figures follow the clips' content; *_followed scores each sentence against "
          "its own moved clip)")
    print(f"written to {path}")


def run_retrieval(args, checkpoint, spec, check, val_shards) -> int:
    import sys
    from pathlib import Path

    from lfvila.errors import ConfigError
    from lfvila.eval.retrieval import HEADLINE, evaluate_retrieval_checkpoint
    from lfvila.trainer.evaluate import metric_table
    from lfvila.trainer.parallel import teardown_distributed

    if args.max_batches is not None:
        raise ConfigError("--max-batches does not apply to --task retrieval: the metrics are over the whole test set")
    try:
        result, path, _, shuffle_record = evaluate_retrieval_checkpoint(
            checkpoint, data=val_shards, overrides=args.overrides, out=Path(args.out) if args.out else None,
            shuffle_seed=args.shuffle_seed if args.shuffle_test else None)
    finally:
        teardown_distributed()
    if not result.keys:
        print(f"lfvila eval: error: 0 videos evaluated from {spec!r} ({check.summary()}): every sample was "
              "skipped by the loader (see the warnings above)", file=sys.stderr)
        return 1
    if path is not None:
        print(f"checkpoint {checkpoint}, paragraph-to-video retrieval over {len(result.keys)} videos from {spec}")
        print("\n".join(metric_table([("value", result.metrics)], HEADLINE)))
        print("(recall in %, ranks 1-based as the release's compute_rt_metrics; lower medr / meanr is better)")
        print(f"written to {path} (similarity.npy: texts x videos in the order of keys.json)")
        if shuffle_record is not None:
            print_shuffle_test(shuffle_record, path.parent / "shuffle_test.json")
    return 0
