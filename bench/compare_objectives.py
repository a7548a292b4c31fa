"""LF-VILA stage 1 against LocVTP on one corpus, one backbone, one trainer, and the shuffle test.

On the demo corpus (the embedded sample ``lfvila demo`` builds: 81 train and 20 held-out long-form
videos), CPU, tiny configs, the same steps and seed for both objectives, this runs the lfvila
commands a user would type:

  1. build the demo corpus (``lfvila.demo.build_demo_corpus``, as ``lfvila demo`` does) into OUT/demo;
  2. ``lfvila train --config train/tiny.yaml --resume auto --set ...`` into OUT/runs/lfvila, and the
     same with ``train/locvtp_tiny.yaml`` into OUT/runs/locvtp (skipped, with a message, when this
     checkout has no such recipe);
  3. ``lfvila eval --checkpoint OUT/runs/NAME --data VAL --shuffle-test --shuffle-seed S --out
     OUT/eval/NAME.json``: held-out retrieval and clip-sentence alignment with the clips in order and
     shuffled in time (``lfvila.eval.shuffle``);
  4. writes OUT/comparison.md: metric, chance, each objective in order and shuffled, and says which
     figures beat chance and which drop under the shuffle.

Every command is printed before it runs. ``--resume auto`` makes a rerun continue (or, once done,
only re-evaluate) the runs already in OUT; delete OUT for a fresh comparison.

Usage (from the repository root):
  PYTHONPATH=$PWD python bench/compare_objectives.py --out runs/compare
  PYTHONPATH=$PWD python bench/compare_objectives.py --out /tmp/cmp --steps 30 --limit-videos 30  # quick look
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (column title, run name, recipe): the objectives compared, in table order
OBJECTIVES = (("LF-VILA", "lfvila", REPO / "train" / "tiny.yaml"),
              ("LocVTP", "locvtp", REPO / "train" / "locvtp_tiny.yaml"))


def run_command(argv: list[str], log_path: Path) -> None:
    """Run ``lfvila ARGV`` (this interpreter's lfvila.cli), its output appended to ``log_path``."""
    shown = "lfvila " + " ".join(shlex.quote(a) for a in argv)
    print(f"$ {shown}", flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {shown}\n")
        log.flush()
        done = subprocess.run([sys.executable, "-m", "lfvila.cli", *argv], stdout=log, stderr=subprocess.STDOUT,
                              cwd=REPO)
    print(f"  ({time.perf_counter() - t:.0f} s, log {log_path})", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"compare_objectives: `{shown}` exited {done.returncode}; see {log_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="working directory: corpus, runs, evaluations, comparison.md")
    parser.add_argument("--steps", type=int, default=300, help="training steps of each objective (default: the demo's 300)")
    parser.add_argument("--seed", type=int, default=0, help="trainer.seed of both runs")
    parser.add_argument("--shuffle-seed", type=int, default=0, help="seed of the shuffle test's clip orders")
    parser.add_argument("--limit-videos", type=int, default=None, help="render only the first N demo videos (quick runs)")
    parser.add_argument("--workers", type=int, default=2, help="processes for rendering and building the corpus")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="an override for both training runs (e.g. optim.lr=2e-4)")
    args = parser.parse_args(argv)

    from lfvila.demo import DemoSettings, build_demo_corpus

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"building the demo corpus in {out / 'demo'}", flush=True)
    _, train_shards, val_shards = build_demo_corpus(out / "demo", DemoSettings(workers=args.workers,
                                                                                limit_videos=args.limit_videos))
    val_spec = "::".join(val_shards)
    results: dict[str, dict] = {}
    for title, name, recipe in OBJECTIVES:
        if not recipe.is_file():
            print(f"{title}: skipped, this checkout has no {recipe.relative_to(REPO)} (the column stays empty)",
                  flush=True)
            continue
        run_dir = out / "runs" / name
        run_command(["train", "--config", str(recipe.relative_to(REPO)), "--resume", "auto",
                     "--set", f"data.train_shards={json.dumps(train_shards)}",
                     "--set", f"data.val_shards={json.dumps(val_shards)}",
                     "--set", f"trainer.out_dir={run_dir}", "--set", f"trainer.max_steps={args.steps}",
                     "--set", f"trainer.seed={args.seed}", "--set", "trainer.device=cpu",
                     "--set", "trainer.tensorboard=false",
                     *[x for o in args.overrides for x in ("--set", o)]], out / "logs" / f"{name}.train.log")
        eval_json = out / "eval" / f"{name}.json"
        run_command(["eval", "--checkpoint", str(run_dir), "--data", val_spec, "--shuffle-test",
                     "--shuffle-seed", str(args.shuffle_seed), "--out", str(eval_json)],
                     out / "logs" / f"{name}.eval.log")
        results[title] = json.loads(eval_json.with_name(f"{name}.shuffle_test.json").read_text())
    skipped = [title for title, _, recipe in OBJECTIVES if not recipe.is_file()]
    command = "PYTHONPATH=$PWD python bench/compare_objectives.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    report = comparison_markdown(results, skipped, steps=args.steps, seed=args.seed, command=command)
    (out / "comparison.md").write_text(report)
    print("\n" + report, flush=True)
    print(f"written to {out / 'comparison.md'}")
    return 0


# rows of the table: held-out retrieval (within the val split) and within-video alignment
ROWS = ("p2v_r1", "p2v_r5", "p2v_medr", "v2p_r1", "v2p_r5", "v2p_medr",
        "sentence_to_clip_acc", "clip_to_sentence_acc")
ALIGNMENT = ("sentence_to_clip_acc", "clip_to_sentence_acc")
LOWER_IS_BETTER = ("p2v_medr", "v2p_medr")


def beats_chance(name: str, value: float, chance: float) -> bool:
    return value < chance if name in LOWER_IS_BETTER else value > chance


def comparison_markdown(results: dict[str, dict], skipped: list[str], *, steps: int, seed: int,
                        command: str) -> str:
    """The side-by-side table (metric, chance, each objective in order and shuffled) and the checks:
    every in-order figure against chance, every alignment figure's drop under the shuffle."""
    from lfvila.trainer.evaluate import chance_level

    if not results:
        return "no objective was trained (no recipe found)\n"
    first = next(iter(results.values()))["metrics"]["in_order"]
    titles = list(results)
    header = ["metric", "chance"] + [f"{t}{suffix}" for t in titles for suffix in ("", " shuffled")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in ROWS + tuple(f"{a}_followed" for a in ALIGNMENT):
        base = name.removesuffix("_followed")
        cells = [f"`{name}`", f"{chance_level(first, base):.2f}"]
        for t in titles:
            m = results[t]["metrics"]
            in_order = m["in_order"].get(base) if name == base else None
            cells += ["-" if in_order is None else f"{in_order:.2f}", f"{m['shuffled'][name]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    n, shuffle_seed = int(first["n_samples"]), next(iter(results.values()))["shuffle_seed"]
    lines += ["", f"{n} held-out videos; {steps} training steps each, trainer.seed {seed}, shuffle seed "
              f"{shuffle_seed}; recall and accuracy in %, medr in positions "
              "(lower is better). `shuffled`: the same checkpoint and data with each video's clips reordered in time "
              "(a derangement; sentences in place); `*_followed`: shuffled, each sentence scored against its own "
              "moved clip (in-order value: the row above).", ""]
    for t in titles:
        m = results[t]["metrics"]
        below = [name for name in ROWS if not beats_chance(name, m["in_order"][name], chance_level(m["in_order"], name))]
        no_drop = [name for name in ALIGNMENT if not m["drop"][name] > 0]
        lines.append(f"- {t}: " + ("every figure beats chance" if not below else
                                   f"NOT above chance: {', '.join(below)}")
                     + "; alignment under the shuffle: " + ("drops (" + ", ".join(
                         f"{name} by {m['drop'][name]:.2f}" for name in ALIGNMENT) + ")" if not no_drop else
                         f"NO drop for {', '.join(no_drop)}")
                     + f"; retrieval drop p2v_r1 {m['drop']['p2v_r1']:.2f}, v2p_r1 {m['drop']['v2p_r1']:.2f}.")
    for t in skipped:
        lines.append(f"- {t}: not run (its recipe is not in this checkout).")
    lines += ["", f"Made by: `{command}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
