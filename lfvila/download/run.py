"""A whole ``lfvila download`` run: select the videos, skip what is done, fetch the rest, account.

Layout of ``VIDEOS`` (the folder ``build --videos`` reads):

- ``<video_id>.<ext>``: a complete, probed video (renamed into place last);
- ``<video_id>.<lang>.vtt``: its caption tracks;
- ``<video_id>/sections.json`` + section files, with ``download.sections: runs`` (lfvila/download/sections.py);
- ``<video_id>.part/``: a download in progress (removed when it ends; a kill leaves only this folder,
  which the shard stage never reads and the next run deletes);
- ``download.parquet`` (one row per requested video) and ``download.json`` (totals), written at the
  end under temporary names; ``download.journal.jsonl`` holds rows of finished videos while a run is
  going, so a killed run resumes where it stopped. With ``--shard-range I/N`` these are
  ``download.I-of-N.*`` so array jobs never write the same file; every run reads them all to resume.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import quote

from lfvila.atomic import AtomicPath, atomic_write_text, replace_durably
from lfvila.download.config import DownloadConfig
from lfvila.download.fetch import (
    NO_URL, PERMANENT, RATE_LIMITED, REASONS, RETRY_IN_RUN, UNSAFE_ID, WORKER_LOST, WRITE_ERROR, FetchError, MediaURL,
    choose_backend, fetch_http, fetch_sections, fetch_subtitles, fetch_ytdlp, host_of, probe_video, resolve_media_url,
)
from lfvila.download.sources import Unreadable, VideoRequest, apply_template, read_requests
from lfvila.manifest.records import unsafe_id_reason

log = logging.getLogger(__name__)
MAX_ID_LENGTH = 255  # a file name component; the manifest's default max_id_length is smaller
COLUMNS = ("video_id", "source", "url", "status", "reason", "detail", "bytes", "duration", "format", "attempts",
           "file", "subtitles", "seconds")


class HostPacer:
    """Per-host pacing shared by all threads: a minimum interval between request starts, and a hold
    (after a 429's Retry-After) that makes every thread wait before its next request to that host.
    With ``--engine ray`` one instance is a Ray actor that every download task asks (RayPacer)."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def reserve(self, host: str) -> float:
        """Book the next request slot of ``host``; returns how many seconds to wait for it."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next.get(host, now))
            self._next[host] = start + self.interval_s
        return start - now

    def wait(self, host: str) -> None:
        if (delay := self.reserve(host)) > 0:
            time.sleep(delay)

    def hold(self, host: str, seconds: float) -> None:
        with self._lock:
            self._next[host] = max(self._next.get(host, 0.0), time.monotonic() + seconds)


def in_shard_range(video_id: str, part: int, total: int) -> bool:
    """Stable partition by a hash of the id: independent of source order and of other videos."""
    if total == 1:
        return True
    return int.from_bytes(hashlib.sha1(video_id.encode("utf-8", "surrogatepass")).digest()[:8], "big") % total == part


def manifest_runs(corpus: Path) -> dict[str, list[dict]]:
    """video_id -> its long-form runs ({start, end} in source seconds) in ``CORPUS/longform.parquet``."""
    import pyarrow.parquet as pq

    path = corpus / "longform.parquet"
    if not path.exists():
        raise FileNotFoundError(f"--manifest {corpus}: {path} does not exist (run build --stage manifest first)")
    runs: dict[str, list[dict]] = {}
    for row in pq.read_table(path, columns=["video_id", "start", "end"]).to_pylist():
        runs.setdefault(row["video_id"], []).append(row)
    return runs


def select_requests(cfg: DownloadConfig, sources: list[str], shard_range: tuple[int, int] = (0, 1),
                    only_ids: set[str] | None = None) -> tuple[list[VideoRequest], dict]:
    """The videos of this run in source order (first occurrence of an id wins) and selection counts."""
    seen: set[str] = set()
    requests: list[VideoRequest] = []
    counts = Counter()
    unreadable: list[dict] = []
    for spec in sources:
        for item in read_requests(spec):
            if isinstance(item, Unreadable):
                counts["unreadable_records"] += 1
                if len(unreadable) < 100:
                    unreadable.append(item._asdict())
                continue
            if item.video_id in seen:
                counts["duplicate_ids"] += 1
                continue
            seen.add(item.video_id)
            if only_ids is not None and item.video_id not in only_ids:
                counts["not_in_manifest"] += 1
                continue
            if not in_shard_range(item.video_id, *shard_range):
                counts["other_shard_range"] += 1
                continue
            requests.append(apply_template(item, cfg.url_template))
    if only_ids is not None:
        counts["manifest_videos_without_source"] = len(only_ids - seen)
    return requests, {**counts, "unreadable_examples": unreadable}


def _accounting_stem(shard_range: tuple[int, int]) -> str:
    part, total = shard_range
    return "download" if total == 1 else f"download.{part}-of-{total}"


def load_previous(out: Path) -> dict[str, dict]:
    """Rows of earlier runs (all shard ranges): tables first, then journals of unfinished runs."""
    import pyarrow.parquet as pq

    rows: dict[str, dict] = {}
    for path in sorted(out.glob("download*.parquet")):
        for row in pq.read_table(path).to_pylist():
            rows[row["video_id"]] = row
    for path in sorted(out.glob("download*.journal.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # the last line of a killed run may be cut short
                if isinstance(row, dict) and "video_id" in row:
                    rows[row["video_id"]] = row
    return rows


def _is_done(prev: dict | None, out: Path, retry_failed: bool) -> bool:
    if prev is None:
        return False
    if prev["status"] == "ok":
        return bool(prev.get("file")) and (out / prev["file"]).is_file()
    return prev["reason"] in PERMANENT and not retry_failed


def _row(req: VideoRequest, status: str, reason: str | None, detail: str, attempts: int, started: float, **kw) -> dict:
    row = {"video_id": req.video_id, "source": req.source, "url": req.url, "status": status, "reason": reason,
           "detail": detail, "bytes": 0, "duration": None, "format": None, "attempts": attempts, "file": None,
           "subtitles": [], "seconds": round(time.monotonic() - started, 3)}
    row.update(kw)
    return row


def download_one(req: VideoRequest, out: Path, cfg: DownloadConfig, pacer: HostPacer, on_bytes=None,
                 runs: list[dict] | None = None) -> dict:
    """Fetch one video into ``out``; always returns its accounting row (never raises FetchError).

    With ``download.sections: runs``, ``runs`` are the video's long-form runs and only their time
    ranges are fetched, into ``out/<video_id>/`` (the sections layout)."""
    started = time.monotonic()
    if (why := unsafe_id_reason(req.video_id, MAX_ID_LENGTH)) is not None:
        return _row(req, "failed", UNSAFE_ID, why, 0, started)
    if not req.url:
        return _row(req, "failed", NO_URL, "no url in the source", 0, started)
    backend = choose_backend(req.url, cfg.backend)
    host = host_of(req.url)
    work = out / f"{req.video_id}.part"
    subtitle_urls = {}
    if cfg.subtitle_url_template is not None:
        subtitle_urls = {lang: cfg.subtitle_url_template.replace("{video_id}", quote(req.video_id, safe=""))
                         .replace("{lang}", lang) for lang in cfg.subtitles}
    attempts = 0
    try:
        while True:
            attempts += 1
            shutil.rmtree(work, ignore_errors=True)
            try:
                work.mkdir(parents=True)
            except OSError as e:
                return _row(req, "failed", WRITE_ERROR, str(e), attempts, started)
            pacer.wait(host)
            try:
                if cfg.sections == "runs":
                    return _sections_row(req, out, work, cfg, backend, runs or [], subtitle_urls, attempts, started)
                if backend == "http":
                    got = fetch_http(req.url, work, req.video_id, cfg, subtitle_urls, on_bytes)
                else:
                    got = fetch_ytdlp(req.url, work, req.video_id, cfg, on_bytes)
                duration, desc = probe_video(got.path)
                # Captions first, the video last: a video file in place means the whole download is.
                subtitles = []
                for lang, path in sorted(got.subtitles.items()):
                    replace_durably(path, out / f"{req.video_id}.{lang}.vtt")
                    subtitles.append(lang)
                final = out / f"{req.video_id}{got.path.suffix.lower()}"
                replace_durably(got.path, final)
                return _row(req, "ok", None, "", attempts, started, bytes=got.bytes, duration=duration,
                            format=f"{desc} ({got.format})", file=final.name, subtitles=subtitles)
            except FetchError as e:
                if e.reason not in RETRY_IN_RUN or attempts >= cfg.max_attempts:
                    return _row(req, "failed", e.reason, e.detail, attempts, started)
                delay = min(cfg.max_backoff_s, cfg.backoff_s * 2 ** (attempts - 1))
                if e.retry_after is not None:
                    delay = min(cfg.max_backoff_s, max(delay, e.retry_after))
                if e.reason == RATE_LIMITED:
                    pacer.hold(host, delay)  # every thread backs off this host, not only this one
                log.debug("%s: %s (%s), retry %d in %.1f s", req.video_id, e.reason, e.detail, attempts, delay)
                time.sleep(delay)
            except OSError as e:
                return _row(req, "failed", WRITE_ERROR, str(e), attempts, started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sections_row(req: VideoRequest, out: Path, work: Path, cfg: DownloadConfig, backend: str, runs: list[dict],
                  subtitle_urls: dict[str, str], attempts: int, started: float) -> dict:
    """Only the runs' time ranges: cut by ffmpeg from the URL (a direct file) or, for YouTube and other
    pages, from the direct URL of the format yt-dlp resolves (captions: download.subtitle_url_template)."""
    from lfvila.download.sections import runs_to_sections
    from lfvila.video.source import SECTIONS_FILE

    spans = runs_to_sections(runs, cfg.section_margin_s, cfg.section_merge_gap_s)
    section_dir = work / req.video_id
    if backend == "http":
        media, captions, how = MediaURL(req.url, {}, "", ""), {}, "sections"
    else:
        media, captions = resolve_media_url(req.url, work, req.video_id, cfg)
        how = f"sections of yt-dlp format {media.format}"
    size, seconds = fetch_sections(media.url, section_dir, req.video_id, spans, cfg, media.headers,
                                   f".{media.ext}" if media.ext else None)
    captions.update(fetch_subtitles(subtitle_urls, work, req.video_id, cfg))
    subtitles = []
    for lang, path in sorted(captions.items()):
        replace_durably(path, out / f"{req.video_id}.{lang}.vtt")
        subtitles.append(lang)
    final = out / req.video_id
    shutil.rmtree(final, ignore_errors=True)  # an earlier, smaller set of sections
    replace_durably(section_dir, final)  # the folder appears complete, sections.json included
    return _row(req, "ok", None, "", attempts, started, bytes=size, duration=seconds,
                format=f"{len(spans)} {how}", file=f"{req.video_id}/{SECTIONS_FILE}", subtitles=subtitles)



def _table(rows: list[dict]):
    import pyarrow as pa

    schema = pa.schema([("video_id", pa.string()), ("source", pa.string()), ("url", pa.string()),
                        ("status", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
                        ("bytes", pa.int64()), ("duration", pa.float64()), ("format", pa.string()),
                        ("attempts", pa.int32()), ("file", pa.string()), ("subtitles", pa.list_(pa.string())),
                        ("seconds", pa.float64())])
    return pa.Table.from_pylist([{k: r.get(k) for k in COLUMNS} for r in rows], schema=schema)


class RayPacer:
    """The HostPacer interface over a HostPacer Ray actor: one pacing for the whole cluster."""

    def __init__(self, actor):
        self.actor = actor

    def wait(self, host: str) -> None:
        import ray

        if (delay := ray.get(self.actor.reserve.remote(host))) > 0:
            time.sleep(delay)

    def hold(self, host: str, seconds: float) -> None:
        self.actor.hold.remote(host, seconds)


def _download_on_ray(req: VideoRequest, out: Path, cfg: DownloadConfig, pacer_actor, runs: list[dict] | None) -> dict:
    return download_one(req, out, cfg, RayPacer(pacer_actor), None, runs)


def _run_local(todo, out: Path, cfg: DownloadConfig, workers: int, runs: dict | None, on_bytes, ray_address):
    """Yield ``(request, previous row, new row)`` as downloads finish: threads in this process."""
    pacer = HostPacer(cfg.host_interval_s)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = {pool.submit(download_one, req, out, cfg, pacer, on_bytes, (runs or {}).get(req.video_id)): (req, prev)
                   for req, prev in todo}
        for future in as_completed(futures):
            yield *futures[future], future.result()


def _run_ray(todo, out: Path, cfg: DownloadConfig, workers: int, runs: dict | None, on_bytes, ray_address):
    """The same on a Ray cluster: at most ``workers`` download tasks in flight, spread over the
    nodes, all pacing each host through one actor. Every node must see ``out`` (shared storage)."""
    from lfvila.ray_cluster import ray_session

    with ray_session(ray_address, workers) as ray:
        # Downloads wait on the network, not a CPU: they reserve no CPU, and `workers` bounds them.
        pacer = ray.remote(num_cpus=0)(HostPacer).remote(cfg.host_interval_s)
        remote = ray.remote(num_cpus=0, max_retries=2, scheduling_strategy="SPREAD")(_download_on_ray)
        out = out.resolve()  # Ray workers run in their own working directory
        queue = list(reversed(todo))
        pending: dict = {}
        try:
            while queue or pending:
                while queue and len(pending) < max(1, workers):
                    req, prev = queue.pop()
                    pending[remote.remote(req, out, cfg, pacer, (runs or {}).get(req.video_id))] = (req, prev)
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    req, prev = pending.pop(ref)
                    try:
                        row = ray.get(ref)
                    except Exception as exc:  # RayTaskError, a node lost after the retries, ...
                        row = _row(req, "failed", WORKER_LOST, f"{type(exc).__name__}: {str(exc)[:500]}", 1,
                                   time.monotonic())
                    on_bytes(int(row.get("bytes") or 0))
                    yield req, prev, row
        finally:
            for ref in pending:  # Ctrl-C or an error here: stop what is still running
                ray.cancel(ref)


ENGINES = {"local": _run_local, "ray": _run_ray}


def download_videos(cfg: DownloadConfig, sources: list[str], out: Path, workers: int = 8,
                    shard_range: tuple[int, int] = (0, 1), retry_failed: bool = False,
                    manifest: Path | None = None, progress: bool = True, engine: str = "local",
                    ray_address: str | None = None) -> dict:
    """Run a download; returns the totals also written to ``download.json``.

    ``engine="local"`` runs ``workers`` threads here; ``engine="ray"`` runs the downloads as Ray tasks
    (``ray_address`` of a running cluster, or a local one started here), written straight into ``out``;
    selection, resume, the journal and the accounting stay in this process either way."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {engine!r}")
    import pyarrow.parquet as pq
    from tqdm import tqdm

    import lfvila
    from lfvila.config import to_dict

    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.sections == "runs" and manifest is None:
        raise ValueError("download.sections: runs needs --manifest CORPUS (the runs whose time ranges to fetch)")
    runs = manifest_runs(manifest) if manifest is not None else None
    requests, selection = select_requests(cfg, sources, shard_range, set(runs) if runs is not None else None)
    previous = load_previous(out)
    rows: dict[str, dict] = {}
    todo = []
    for req in requests:
        prev = previous.get(req.video_id)
        if _is_done(prev, out, retry_failed):
            rows[req.video_id] = prev
        else:
            todo.append((req, prev))
    skipped = Counter(rows[r]["status"] for r in rows)
    stem = _accounting_stem(shard_range)
    journal_path = out / f"{stem}.journal.jsonl"
    lock = threading.Lock()
    done_bytes = [0]
    bar = tqdm(total=len(todo), unit="video", desc="download", disable=not progress, dynamic_ncols=True)

    def on_bytes(n: int) -> None:
        with lock:
            done_bytes[0] += n

    with open(journal_path, "a", encoding="utf-8") as journal:
        for req, prev, row in ENGINES[engine](todo, out, cfg, workers, runs, on_bytes, ray_address):
            if prev is not None:
                row["attempts"] += int(prev.get("attempts") or 0)  # attempts over all runs
            rows[req.video_id] = row
            journal.write(json.dumps(row) + "\n")
            journal.flush()
            elapsed = max(time.monotonic() - t0, 1e-9)
            bar.set_postfix_str(f"{done_bytes[0] / 1e6 / elapsed:.1f} MB/s", refresh=False)
            bar.update(1)
    bar.close()
    ordered = [rows[req.video_id] for req in requests]
    statuses = Counter(r["status"] for r in ordered)
    failed_by = Counter(r["reason"] for r in ordered if r["status"] == "failed")
    ok_rows = [r for r in ordered if r["status"] == "ok"]
    totals = {
        "requested": len(ordered), "ok": statuses["ok"], "failed": statuses["failed"],
        "failed_by_reason": dict(sorted(failed_by.items())),
        "permanent_failures": sum(n for reason, n in failed_by.items() if reason in PERMANENT),
        "attempted_this_run": len(todo), "skipped_ok": skipped["ok"], "skipped_failed": skipped["failed"],
        "bytes": sum(int(r["bytes"] or 0) for r in ok_rows),
        "video_hours": round(sum(float(r["duration"] or 0) for r in ok_rows) / 3600, 6),
        "bytes_this_run": done_bytes[0], "seconds": round(time.monotonic() - t0, 3),
        "selection": selection, "sources": list(sources), "shard_range": f"{shard_range[0]}/{shard_range[1]}",
        "manifest": str(manifest) if manifest is not None else None, "retry_failed": retry_failed, "engine": engine,
        "config": to_dict(cfg), "lfvila_version": lfvila.__version__,
        "reasons": {k: REASONS[k] for k in sorted(failed_by)},
    }
    totals["check"] = f"requested {totals['requested']} == ok {totals['ok']} + failed {totals['failed']}"
    totals["check_ok"] = totals["requested"] == totals["ok"] + totals["failed"]
    with AtomicPath(out / f"{stem}.parquet") as tmp:
        pq.write_table(_table(ordered), tmp)
    atomic_write_text(out / f"{stem}.json", json.dumps(totals, indent=2) + "\n")
    journal_path.unlink(missing_ok=True)  # its rows are in the table now
    return totals


def format_download_summary(totals: dict) -> str:
    """The table printed at the end of ``lfvila download`` (like ``build``'s)."""
    header = f"{'status':<10}{'videos':>8}{'MB':>10}{'hours':>9}"
    lines = [header, "-" * len(header),
             f"{'ok':<10}{totals['ok']:>8}{totals['bytes'] / 1e6:>10.1f}{totals['video_hours']:>9.3f}",
             f"{'failed':<10}{totals['failed']:>8}"]
    for reason, n in totals["failed_by_reason"].items():
        lines.append(f"  failed, {reason}{' (permanent)' if reason in PERMANENT else ''}: {n}")
    lines.append(f"{'requested':<10}{totals['requested']:>8}   (skipped as done: {totals['skipped_ok']} ok, "
                 f"{totals['skipped_failed']} failed; attempted now: {totals['attempted_this_run']})")
    lines.append(("OK: " if totals["check_ok"] else "MISMATCH: ") + totals["check"])
    return "\n".join(lines)
