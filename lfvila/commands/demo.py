"""lfvila demo: render the embedded sample, build its corpus, train tiny stage 1 on CPU, evaluate.

Prints paragraph-to-video / video-to-paragraph recall and within-video clip-to-sentence
alignment on the held-out split next to their chance levels, and where the shards, the
preview sheet, the report and the TensorBoard logs are. Trains a fixed 300 steps (about 8
minutes on 2 idle CPU cores; a slower machine is told so and still trains every step).

``--steps 2`` is a quick check (about a minute on 2 CPU cores) that the whole chain runs from this
install: every stage and output is the same, only the figures mean nothing yet. Sources and the
recipe are packaged with lfvila, so the demo runs from any directory.

Examples:
  lfvila demo --out demo_out
  lfvila demo --steps 2 --out /tmp/demo_check
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps, always all of them (default 300, which beats chance; a machine "
                             "slower than expected says so instead of stopping early); a few, e.g. 2, are a quick "
                             "check that every stage runs")
    parser.add_argument("--limit-videos", type=int, default=None, help="use only the first N sample videos")
    parser.add_argument("--workers", type=int, default=2, help="render / build worker processes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a value of train/tiny.yaml, e.g. --set data.batch_size=4")


def run(args) -> int:
    from lfvila.demo import DemoSettings, beats_chance, format_demo_summary, run_demo

    from lfvila.errors import UserError

    steps = {} if args.steps is None else {"max_steps": args.steps}
    try:
        settings = DemoSettings(limit_videos=args.limit_videos, workers=args.workers,
                                train_overrides=args.overrides, **steps)
    except ValueError as exc:  # e.g. --steps 0: the user's to fix, one line and exit 2
        raise UserError(str(exc)) from None
    result = run_demo(args.out, settings)
    print()
    print(format_demo_summary(result))
    verdict = beats_chance(result.after)
    if settings.max_steps < DemoSettings.max_steps:
        print(f"quick check: every stage ran and wrote its outputs; {settings.max_steps} step(s) are too few "
              f"for the figures to mean anything (run the default {DemoSettings.max_steps} to judge them)")
    elif verdict and all(verdict.values()):
        print("every figure beats chance: the chain from sources to losses works")
    else:
        print("figures NOT above chance: " + ", ".join(k for k, ok in verdict.items() if not ok))
    return 0
