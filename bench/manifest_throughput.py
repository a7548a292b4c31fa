"""Throughput and peak memory of the whole manifest stage on synthetic HD-VILA metadata.

Generates HD-VILA-format JSON lines (one video per line, ~30 clips each, clip texts of ~32
words, ~3 % of clip numbers missing so runs break, a few malformed lines and bad spans), then runs
``lfvila build --stage manifest`` in a fresh child process per size and reports wall time, CPU time,
clips per second per core (clips / CPU seconds of the child) and the child's peak RSS.

    .venv/bin/python bench/manifest_throughput.py --sizes 1000000 10000000 --workdir /tmp/lfvila-bench

``--subtitle-videos 1000 10000`` instead measures ``hdvila:META?subtitles=DIR``: metadata without
text (30 contiguous clips of 8-20 s per video) and one YouTube-auto-style caption track per video
(``<video_id>.en.vtt``: per-word ``<HH:MM:SS.mmm><c>`` tags, every line shown twice as captions
roll, ~2.5 words/s), so the clip text is rebuilt from the tracks.

``--runs-file`` also writes the derived long-form videos as a released-style runs file (one JSON
list of clip ids per line) and rebuilds with ``--set manifest.runs_file=...``: the cost of the
released runs path, and whether its long-form table is byte-identical to the derived one.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

WORDS = ("the a to and of you this it in that is we so going for on be with just can your here now "
         "right want do have one little bit really like make get what all up out see go know about then "
         "put take cut add water time way use some there look little good also need start inch board "
         "paint oil pan heat minutes piece side top back first next").split()


def _hms(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def _base_block(n_clips: int, rng: random.Random) -> list[bytes]:
    """JSON lines of videos ``syn<9 digits>`` holding ``n_clips`` clips in total."""
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 45))) for _ in range(4096)]
    lines: list[bytes] = []
    written = v = 0
    while written < n_clips:
        video_id = f"syn{v:09d}"
        v += 1
        if v % 50_000 == 0:
            lines.append(b'{"video_id": "broken", "clip": [\n')  # a malformed line
        k = min(rng.randint(10, 50), n_clips - written)
        t = rng.uniform(0, 30)
        clips = []
        number = 0
        for _ in range(k):
            number += 2 if rng.random() < 0.03 else 1
            dur = rng.uniform(4, 20)
            start, end = (t, t + dur) if rng.random() > 0.001 else (t + dur, t)  # a few inverted spans
            clips.append({"clip_id": f"{video_id}.{number}.mp4", "span": [_hms(start), _hms(end)],
                          "text": texts[rng.randrange(len(texts))]})
            t += dur + rng.uniform(0, 3)
        lines.append((json.dumps({"video_id": video_id, "url": f"https://www.youtube.com/watch?v={video_id}",
                                  "clip": clips}) + "\n").encode())
        written += k
    return lines


def generate(path: Path, n_clips: int, seed: int = 0, block_clips: int = 500_000) -> int:
    """Write synthetic HD-VILA metadata with exactly ``n_clips`` clips.

    A random block of up to ``block_clips`` clips is generated once and repeated with the video id
    prefix renamed per repetition (``syn`` -> ``b0001``...), so ids stay unique and generating 10M
    clips is I/O bound rather than minutes of Python.
    """
    rng = random.Random(seed)
    base = _base_block(min(n_clips, block_clips), rng)
    base_clips = min(n_clips, block_clips)
    written = 0
    with open(path, "wb") as f:
        repetition = 0
        while written < n_clips:
            if n_clips - written < base_clips:
                block = _base_block(n_clips - written, random.Random(seed + 1 + repetition))
                take = n_clips - written
            else:
                block, take = base, base_clips
            prefix = b"syn" if repetition == 0 else b"b%04d" % repetition
            f.writelines(line.replace(b'"syn', b'"' + prefix).replace(b"=syn", b"=" + prefix) for line in block)
            written += take
            repetition += 1
    return written


def _vtt_time(t: float) -> str:
    return _hms(t)


def write_subtitle_corpus(workdir: Path, n_videos: int, seed: int = 0) -> tuple[Path, Path, int]:
    """Metadata without text plus one rolling auto-caption track per video; returns (meta, dir, clips)."""
    rng = random.Random(seed)
    subs = workdir / f"subs_{n_videos}"
    subs.mkdir(parents=True, exist_ok=True)
    meta = workdir / f"hdvila_subs_{n_videos}.jsonl"
    n_clips = 0
    with open(meta, "w") as f:
        for v in range(n_videos):
            video_id = f"sub{v:08d}"
            clips, t = [], rng.uniform(0, 5)
            for number in range(1, 31):
                dur = rng.uniform(8, 20)
                clips.append({"clip_id": f"{video_id}.{number}.mp4", "span": [_hms(t), _hms(t + dur)]})
                t += dur
            f.write(json.dumps({"video_id": video_id, "clip": clips}) + "\n")
            n_clips += len(clips)
            cues, previous, w = ["WEBVTT\nKind: captions\nLanguage: en\n"], " ", 0.0  # YouTube: a lone " " line
            while w < t:
                line_words = [rng.choice(WORDS) for _ in range(rng.randint(5, 9))]
                times = [w + 0.4 * i for i in range(len(line_words))]
                end = times[-1] + 0.4
                tagged = line_words[0] + "".join(f"<{_vtt_time(x)}><c> {word}</c>" for x, word in
                                                 zip(times[1:], line_words[1:]))
                cues.append(f"{_vtt_time(w)} --> {_vtt_time(end)} align:start position:0%\n{previous}\n{tagged}\n")
                previous = " ".join(line_words)
                cues.append(f"{_vtt_time(end)} --> {_vtt_time(end + 0.01)} align:start position:0%\n{previous}\n \n")
                w = end + 0.01
            (subs / f"{video_id}.en.vtt").write_text("\n".join(cues))
    return meta, subs, n_clips


def run_stage(meta: Path, out: Path, lfvila_dir: Path | None = None, options: str = "",
              extra_args: tuple = ()) -> dict:
    """Run the manifest stage in a child process; wall, CPU and peak RSS of that child alone.

    ``lfvila_dir``: a directory holding another ``lfvila`` package (e.g. an older commit from
    ``git archive COMMIT lfvila | tar -x -C DIR``), put first on the child's PYTHONPATH.
    """
    code = ("import sys; from lfvila.cli import main; "
            f"sys.exit(main(['build', '--out', {str(out)!r}, '--source', 'hdvila:' + {str(meta) + options!r}, '--stage', 'manifest', *{list(extra_args)!r}]))")
    env = dict(os.environ)
    if lfvila_dir is not None:
        paths = [str(lfvila_dir.resolve())] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env["PYTHONPATH"] = os.pathsep.join(paths)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL, env=env, cwd=_child_cwd(lfvila_dir))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"manifest stage failed with status {status}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}


def _child_cwd(lfvila_dir: Path | None) -> str | None:
    # With a baseline package, run outside the repository so "" on sys.path cannot shadow it.
    return "/" if lfvila_dir is not None else None


def _tables_identical(a: Path, b: Path) -> bool:
    return all((a / name).read_bytes() == (b / name).read_bytes()
               for name in ("clips.parquet", "rejects.parquet", "longform.parquet"))


def write_runs_file(longform: Path, path: Path) -> int:
    """The long-form videos of ``longform`` as released-style runs (a JSON list of clip ids per line)."""
    import pyarrow.parquet as pq
    lines = 0
    with open(path, "w") as f:
        for batch in pq.ParquetFile(longform).iter_batches(columns=["sentences"]):
            for sentences in batch.column(0).to_pylist():
                f.write(json.dumps([s["clip_id"] for s in sentences]) + "\n")
                lines += 1
    return lines


def reference_loop_cpu_s() -> float:
    """CPU seconds of a fixed pure-Python loop: shows how fast this machine ran Python at the time."""
    t0 = time.process_time()
    sum(range(10_000_000))
    return time.process_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lfvila-bench-manifest"))
    parser.add_argument("--keep", action="store_true", help="keep the generated input and outputs")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="directory with another lfvila package to run first on the same input (side by side); "
                             "its tables are compared byte for byte with the current ones")
    parser.add_argument("--subtitle-videos", type=int, nargs="+", default=None,
                        help="measure hdvila ?subtitles= on this many synthetic videos (30 clips and one track each)")
    parser.add_argument("--runs-file", action="store_true",
                        help="also rebuild from the derived runs written as a runs file (manifest.runs_file)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.subtitle_videos:
        subtitle_runs(args)
        return
    print(f"reference loop sum(range(1e7)): {reference_loop_cpu_s():.3f} CPU s; load average {os.getloadavg()}\n")
    print(f"| clips | input MB | wall s | CPU s | clips/s (wall) | clips/s/core (CPU) | peak RSS MB | long-form videos |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        meta = args.workdir / f"hdvila_{size}.jsonl"
        out = args.workdir / f"out_{size}"
        n = generate(meta, size)
        if args.baseline is not None:
            base_out = args.workdir / f"baseline_{size}"
            b = run_stage(meta, base_out, args.baseline)
            print(f"| {n:,} (baseline) | {meta.stat().st_size / 1e6:.0f} | {b['wall_s']:.1f} | {b['cpu_s']:.1f} | "
                  f"{n / b['wall_s']:,.0f} | {n / b['cpu_s']:,.0f} | {b['peak_rss_mb']:.0f} | |", flush=True)
        r = run_stage(meta, out)
        counts = json.loads((out / "corpus.json").read_text())["counts"]
        videos = counts["longform"]["train"]["videos"] + counts["longform"]["val"]["videos"]
        print(f"| {n:,} | {meta.stat().st_size / 1e6:.0f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
              f"{n / r['wall_s']:,.0f} | {n / r['cpu_s']:,.0f} | {r['peak_rss_mb']:.0f} | {videos:,} |", flush=True)
        if args.baseline is not None:
            print(f"|  current / baseline CPU-s: {b['cpu_s'] / r['cpu_s']:.2f}x faster; tables byte-identical: "
                  f"{_tables_identical(out, base_out)} |", flush=True)
            if not args.keep:
                for p in base_out.iterdir():
                    p.unlink()
                base_out.rmdir()
        if args.runs_file:
            runs = args.workdir / f"runs_{size}.jsonl"
            # In a child: the table read would grow this process, and a child's peak RSS counts the
            # parent's memory at fork time (measured: 1,042 MB instead of ~320 MB at 1M clips).
            n_runs = int(subprocess.run(
                [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import manifest_throughput as m; "
                 "print(m.write_runs_file(*map(m.Path, sys.argv[2:])))", str(Path(__file__).resolve().parent),
                 str(out / "longform.parquet"), str(runs)], check=True, capture_output=True, text=True).stdout)
            listed_out = args.workdir / f"listed_{size}"
            lr = run_stage(meta, listed_out, extra_args=("--set", f"manifest.runs_file={runs}"))
            same = (out / "longform.parquet").read_bytes() == (listed_out / "longform.parquet").read_bytes()
            print(f"| {n:,} (runs_file, {n_runs:,} lines, {runs.stat().st_size / 1e6:.0f} MB) | "
                  f"{meta.stat().st_size / 1e6:.0f} | {lr['wall_s']:.1f} | {lr['cpu_s']:.1f} | {n / lr['wall_s']:,.0f} | "
                  f"{n / lr['cpu_s']:,.0f} | {lr['peak_rss_mb']:.0f} | longform.parquet byte-identical: {same} |",
                  flush=True)
            if not args.keep:
                runs.unlink()
                for p in listed_out.iterdir():
                    p.unlink()
                listed_out.rmdir()
        if not args.keep:
            meta.unlink()
            for p in out.iterdir():
                p.unlink()
            out.rmdir()
    print(f"\nmachine: {os.cpu_count()} CPU cores, python {sys.version.split()[0]}; "
          f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {os.getloadavg()}; "
          f"reference loop sum(range(1e7)) {reference_loop_cpu_s():.3f} CPU s")


def subtitle_runs(args) -> None:
    print(f"reference loop sum(range(1e7)): {reference_loop_cpu_s():.3f} CPU s; load average {os.getloadavg()}\n")
    print("| videos (tracks) | clips | tracks MB | wall s | CPU s | clips/s/core (CPU) | CPU ms per track | peak RSS MB | words in clips |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n_videos in args.subtitle_videos:
        meta, subs, n = write_subtitle_corpus(args.workdir, n_videos)
        out = args.workdir / f"out_subs_{n_videos}"
        r = run_stage(meta, out, options=f"?subtitles={subs}")
        counts = json.loads((out / "corpus.json").read_text())["counts"]
        src = next(iter(counts["sources"].values()))
        mb = sum(p.stat().st_size for p in subs.iterdir()) / 1e6
        print(f"| {n_videos:,} | {n:,} | {mb:.0f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {n / r['cpu_s']:,.0f} | "
              f"{1000 * r['cpu_s'] / n_videos:.1f} | {r['peak_rss_mb']:.0f} | {src['subtitle_words_in_clips']:,} |", flush=True)
        if not args.keep:
            shutil.rmtree(out)
            shutil.rmtree(subs)
            meta.unlink()
    print(f"\nmachine: {os.cpu_count()} CPU cores, python {sys.version.split()[0]}; "
          f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {os.getloadavg()}; "
          f"reference loop sum(range(1e7)) {reference_loop_cpu_s():.3f} CPU s")


if __name__ == "__main__":
    main()
