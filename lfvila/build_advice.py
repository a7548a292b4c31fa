"""End-of-build advice: when one reason takes most of what a stage had, say so with the setting to change.

A recipe tuned for one source can quietly throw away most of another (YouCook2 with the LF-VILA
defaults loses three quarters of its clips to ``run_too_short``): the counts are in corpus.json,
but a user reads the last lines of the build. These lines name the share, the reason and the
config keys (with their current values) that move it.
"""
from __future__ import annotations

# Reasons a setting can move, and the advice for each; {placeholders} are filled from the config.
ADVICE = {
    "run_too_short": "lower manifest.min_clips (now {manifest.min_clips}) or raise manifest.max_gap_s "
                     "(now {manifest.max_gap_s}) / manifest.max_overlap_s (now {manifest.max_overlap_s})",
    "piece_too_short": "raise manifest.max_clips (now {manifest.max_clips}) / manifest.max_duration_s "
                       "(now {manifest.max_duration_s}) or lower manifest.min_clips (now {manifest.min_clips})",
    "beyond_duration": "raise manifest.duration_tolerance_s (now {manifest.duration_tolerance_s}) if the "
                       "durations are rounded",
    "too_little_left": "lower manifest.min_clips (now {manifest.min_clips}): a sample needs that many clips "
                       "with frames",
    "decode_timeout": "raise video.timeout_s (now {video.timeout_s}) / video.timeout_per_video_s (now "
                      "{video.timeout_per_video_s}), then rerun with --retry-failed",
    "decode_error": "raise video.max_decode_errors (now {video.max_decode_errors}) to keep videos with "
                    "concealed damage",
    "video_not_found": "check --videos: videos are looked up as DIR/<video_id>.<ext> or DIR/<video_id>/<clip_id>",
    # Not a loss to fix when the file holds every split (QuerYD's captions, DiDeMo with the lists).
    "not_in_split": "check the source's ?split_list= / ?split= (expected when the annotation file holds "
                    "the other splits too)",
}


def _setting(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _advice(reason: str, cfg) -> str:
    import re

    text = ADVICE.get(reason)
    if text is None:
        return ""
    return "; to keep more: " + re.sub(r"\{([a-z_.]+)\}", lambda m: repr(_setting(cfg, m.group(1))), text)


def _dominant(lost: dict[str, int], total: int, share: float) -> tuple[str, int] | None:
    if not lost or total <= 0:
        return None
    reason, n = max(lost.items(), key=lambda kv: kv[1])
    return (reason, n) if n / total >= share else None


def manifest_advice(counts: dict, cfg, share: float = 0.5) -> list[str]:
    """Lines for each source whose records or clips went mostly to one reject reason."""
    lines = []
    for name, c in counts.get("sources", {}).items():
        for what, lost, total in (("input records", c.get("rejects_by_reason", {}), c.get("input_records", 0)),
                                  ("kept clips", c.get("merge_rejects_by_reason", {}), c.get("kept_clips", 0))):
            hit = _dominant(lost, total, share)
            if hit:
                reason, n = hit
                lines.append(f"{name}: {n} of {total} {what} ({100 * n / total:.0f} %) left out as {reason}"
                             f"{_advice(reason, cfg)}")
    return lines


def shard_advice(summary: dict, cfg, share: float = 0.5) -> list[str]:
    """A line when the clips of the planned samples went mostly to one reason in the video stage."""
    totals = summary.get("totals") or {}
    hit = _dominant(totals.get("clips_rejected_by_reason", {}), totals.get("clips_input", 0), share)
    if not hit:
        return []
    reason, n = hit
    total = totals["clips_input"]
    return [f"video stage: {n} of {total} clips ({100 * n / total:.0f} %) left out as {reason}{_advice(reason, cfg)}"]
