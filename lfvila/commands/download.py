"""lfvila download: fetch the videos (and caption tracks) of one or more sources into VIDEOS.

Every requested video ends as a row of VIDEOS/download.parquet (status ok or failed, with a reason
from a fixed vocabulary; see docs/download.md); totals go to VIDEOS/download.json. A rerun skips
videos already downloaded and permanent failures; --retry-failed retries those failures too.

Examples:
  lfvila download --source hdvila:hdvila_part0.jsonl --out videos --workers 16
  lfvila download --source hdvila:hdvila_part0.jsonl --manifest corpus --out videos   # only videos with runs
  lfvila download --source urls:list.csv --out videos --set download.max_height=480
  lfvila download --source activitynet:val_1.json --out videos --shard-range $SLURM_ARRAY_TASK_ID/64
  lfvila download --source hdvila:hdvila_part0.jsonl --out /shared/videos --engine ray --ray-address HEAD:6379 --workers 256
"""
from __future__ import annotations

from lfvila.ray_cluster import RAY_ADDRESS_HELP
from lfvila.resources import recipe_help, resolve_recipe


def add_arguments(parser) -> None:
    parser.add_argument("--source", action="append", default=[], required=True, metavar="FORMAT:PATH",
                        help="videos to fetch, repeatable; FORMAT is hdvila, activitynet, youcook2, howto100m or urls")
    parser.add_argument("--out", required=True, help="videos directory (what build --videos reads)")
    parser.add_argument("--config", default=None, help=recipe_help("pipelines") + "; its download: section is used")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config value, e.g. --set download.max_height=480")
    parser.add_argument("--workers", type=int, default=8,
                        help="concurrent downloads: threads here, or Ray tasks over the whole cluster with --engine ray")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="where downloads run: threads in this process, or Ray tasks (every node must see --out)")
    parser.add_argument("--ray-address", default=None, help=RAY_ADDRESS_HELP)
    parser.add_argument("--shard-range", default=None, metavar="I/N",
                        help="static partition for array jobs: only the videos of part I of N (0-based, by id hash)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="also retry videos that failed with a permanent reason (not_found, private, ...)")
    parser.add_argument("--manifest", default=None, metavar="CORPUS",
                        help="a built manifest: download only the videos that have long-form runs in it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def interrupted(args) -> str:
    """What a Ctrl-C left complete, and the command that continues (printed by the CLI)."""
    return (f"Videos finished so far are in {args.out} and in its journal; partial downloads (<video_id>.part/) "
            "never look complete and are redone. Run the same command again to continue.")


def run(args) -> int:
    from pathlib import Path

    from lfvila.build_config import BuildConfig
    from lfvila.config import load_config
    from lfvila.download.run import download_videos, format_download_summary
    from lfvila.shards.build import parse_shard_range

    recipe = resolve_recipe(args.config, "pipelines")
    cfg = load_config(BuildConfig, recipe, args.overrides).download
    out = Path(args.out)
    totals = download_videos(cfg, args.source, out, workers=args.workers,
                             shard_range=parse_shard_range(args.shard_range), retry_failed=args.retry_failed,
                             manifest=Path(args.manifest) if args.manifest else None,
                             progress=not args.no_progress, engine=args.engine, ray_address=args.ray_address)
    print(format_download_summary(totals))
    print(f"videos: {out}  accounting: {out / 'download.parquet'}")
    if totals["requested"] == 0:
        print("nothing to download: no video selected")
        return 0
    return 0 if totals["ok"] > 0 else 1
