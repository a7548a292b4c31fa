"""lfvila build: sources -> manifests (clips, rejects, long-form tables) -> WebDataset shards.

Examples:
  lfvila build --out corpus --source activitynet:train.json --stage manifest
  lfvila build --out corpus --source hdvila:meta.jsonl --videos videos/ --config pipelines/lfvila8m.yaml
  lfvila build --out corpus --source hdvila:meta.jsonl --videos videos/ --engine ray --ray-address HOST:6379
"""
from __future__ import annotations

import os
from pathlib import Path

from lfvila.manifest.sources import FORMATS
from lfvila.ray_cluster import RAY_ADDRESS_HELP
from lfvila.resources import recipe_help, resolve_recipe


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="corpus directory")
    parser.add_argument("--source", action="append", default=[], metavar="FORMAT:PATH",
                        help=f"input source, repeatable; FORMAT is {', '.join(FORMATS[:-1])} or {FORMATS[-1]}")
    parser.add_argument("--config", default=None,
                        help=recipe_help("pipelines") + "; --stage shards reads the recipe recorded in OUT/corpus.json "
                             "and refuses a different one")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config value, e.g. --set manifest.min_clips=5; at --stage shards only "
                             "runtime settings (video.timeout_s, video.timeout_per_video_s, video.decoder_threads)")
    parser.add_argument("--stage", choices=["manifest", "shards", "all"], default="all",
                        help="manifest: tables only; shards: video work from an existing manifest; all (default)")
    parser.add_argument("--videos", default=None, help="directory of source videos (needed for shards)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="local worker processes")
    parser.add_argument("--engine", choices=["local", "ray"], default="local", help="where shard tasks run")
    parser.add_argument("--ray-address", default=None, help=RAY_ADDRESS_HELP)
    parser.add_argument("--shard-range", default=None, metavar="I/N",
                        help="static partition for array jobs: build only part I of N (0-based)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a corpus of other inputs already in --out (its shards are removed)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="quick partial corpus: shards of only the first N long-form videos (in key order) of each "
                             "split; a later build without --limit completes it")
    parser.add_argument("--retry-failed", action="store_true",
                        help="also redo complete shards holding failed samples (missing video, timeout, error)")


def run(args) -> int:

    from lfvila.build_advice import manifest_advice, shard_advice
    from lfvila.build_config import BuildConfig, corpus_config
    from lfvila.config import load_config, to_dict
    from lfvila.corpus_dir import check_sources, empty_manifest_reason, prepare_manifest_out
    from lfvila.errors import InputError, UserError

    out = Path(args.out)
    advice: list[str] = []  # printed last, where a user reads
    manifest_stage, shard_stage = args.stage in ("manifest", "all"), args.stage in ("shards", "all")
    # Everything the user gave is checked before any heavy work.
    if manifest_stage:
        check_sources(args.source)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.stage == "shards" and args.videos is None:
        raise UserError("--videos DIR is needed for the shard stage")
    if shard_stage and args.videos is not None and not Path(args.videos).is_dir():
        raise InputError(f"videos directory {args.videos} does not exist")
    # A manifest stage resolves the recipe and records it in corpus.json; --stage shards reads it back.
    recipe = resolve_recipe(args.config, "pipelines")
    if args.stage == "shards":
        cfg = corpus_config(out, recipe, args.overrides)
    else:
        cfg = load_config(BuildConfig, recipe, args.overrides)

    if manifest_stage:
        from lfvila.manifest.build import build_manifest

        done = prepare_manifest_out(out, to_dict(cfg), args.source, overwrite=args.overwrite)
        if done:
            print(done)
        counts = build_manifest(cfg, out, args.source)
        advice += manifest_advice(counts, cfg)
        reason = empty_manifest_reason(counts)
        if reason:
            _print_advice(advice)
            raise UserError(reason)
    if not shard_stage or args.videos is None:
        _print_advice(advice)
        if shard_stage:
            print(f"shards skipped: no --videos given; build them with: lfvila build --out {out} --stage shards "
                  f"--videos DIR")
        return 0

    from lfvila.shards.build import build_shards, empty_build_reason, format_build_summary

    summary = build_shards(cfg, out, Path(args.videos), workers=args.workers, engine=args.engine,
                           ray_address=args.ray_address, shard_range=args.shard_range,
                           retry_failed=args.retry_failed, limit=args.limit)
    if not summary:
        _print_advice(advice)
        return 0
    print(format_build_summary(summary))
    print(f"shards: {out / 'shards'}  index: {out / 'shards' / 'index.parquet'}")
    _print_advice(advice + shard_advice(summary, cfg))
    reason = empty_build_reason(summary, Path(args.videos))
    if reason:
        raise UserError(reason)
    failed = summary["totals"]["samples_failed"]
    if failed and not args.retry_failed:
        print(f"{failed} sample(s) failed (missing video, timeout or error) and stay failed on a rerun; once "
              f"their cause is fixed, rerun with --retry-failed to redo their shards")
    return 0


def interrupted(args) -> str:
    """What a Ctrl-C left complete, and the command that continues (printed by the CLI)."""
    out = Path(args.out)
    tables = [name for name in ("clips.parquet", "rejects.parquet", "longform.parquet") if (out / name).exists()]
    shards = len(list((out / "shards").glob("*.stats.json"))) if (out / "shards").is_dir() else 0
    done = (f"manifest tables complete ({', '.join(tables)})" if len(tables) == 3 else "manifest tables not complete")
    return (f"{done}; {shards} shard(s) complete in {out / 'shards'} (a shard is complete once its .stats.json "
            "exists; partial files are temporary and removed or redone). Run the same command again to continue.")


def _print_advice(lines: list[str]) -> None:
    for line in lines:
        print(f"note: {line}")
