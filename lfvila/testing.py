"""Small synthetic corpora in the shard sample format, for tests and fixtures.

The sample format is the contract between the shard writer and the loader (see README,
"Sample format"): ``KEY.json`` with ``frame_times`` and ``sentences`` carrying
``[frame_start, frame_end)`` frame ranges, and ``KEY.NNNN.jpg`` frames in time order.
Each synthetic sentence names a colour and its frames show that colour, so a model can
learn the pairing: tests that expect learning use this.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 220, 40),
    "purple": (150, 50, 200),
    "orange": (240, 140, 30),
    "white": (240, 240, 240),
    "black": (15, 15, 15),
}


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def synthetic_sample(
    key: str,
    rng: random.Random,
    n_sentences: int = 4,
    frames_per_sentence: tuple[int, int] = (3, 6),
    size: tuple[int, int] = (48, 80),
    fps: float = 3.0,
) -> dict:
    """One sample as a webdataset dict: ``__key__``, ``json`` (bytes, with ``frame_bytes``) and
    ``NNNN.jpg`` frames, in the shard stage's member order (write it with :func:`write_sample_tar`;
    webdataset's TarWriter sorts members, putting the JSON last)."""
    h, w = size
    names = list(COLOURS)
    frames: list[bytes] = []
    frame_times: list[float] = []
    sentences = []
    t = 0.0
    for i in range(n_sentences):
        colour = rng.choice(names)
        n = rng.randint(*frames_per_sentence)
        start = t
        first = len(frames)
        for _ in range(n):
            noise = np.random.default_rng(rng.randrange(1 << 30)).integers(-12, 13, size=(h, w, 3))
            rgb = np.clip(np.array(COLOURS[colour])[None, None, :] + noise, 0, 255).astype(np.uint8)
            frames.append(_jpeg(rgb))
            frame_times.append(round(t + 0.5 / fps, 6))
            t += 1.0 / fps
        sentences.append({
            "text": f"the screen is {colour} now",
            "start": round(start, 6),
            "end": round(t, 6),
            "clip_id": f"{key}-{i}",
            "frame_start": first,
            "frame_end": len(frames),
        })
    meta = {
        "key": key, "source": "synthetic", "video_id": key, "start": 0.0, "end": round(t, 6),
        "fps": fps, "width": w, "height": h, "frame_times": frame_times, "sentences": sentences,
        "frame_bytes": [len(jpg) for jpg in frames],
    }
    sample = {"__key__": key, "json": json.dumps(meta).encode()}
    for i, jpg in enumerate(frames):
        sample[f"{i:04d}.jpg"] = jpg
    return sample


def write_synthetic_shards(
    out_dir: str | Path,
    n_samples: int = 16,
    samples_per_shard: int = 4,
    split: str = "train",
    seed: int = 0,
    n_sentences: tuple[int, int] = (4, 6),
    frames_per_sentence: tuple[int, int] = (3, 6),
    size: tuple[int, int] = (48, 80),
) -> list[str]:
    """Write ``{split}-NNNNNN.tar`` shards of synthetic samples; return their paths in order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for shard in range((n_samples + samples_per_shard - 1) // samples_per_shard):
        path = out_dir / f"{split}-{shard:06d}.tar"
        keys = [f"{split}_{i:06d}" for i in range(shard * samples_per_shard,
                                                    min(n_samples, (shard + 1) * samples_per_shard))]
        write_sample_tar(path, [synthetic_sample(key, rng, rng.randint(*n_sentences), frames_per_sentence, size)
                                for key in keys])
        paths.append(str(path))
    return paths


def write_sample_tar(path: str | Path, samples: list[dict]) -> None:
    """Write webdataset sample dicts to a tar as the shard stage does: members ``KEY.EXT`` in
    each dict's order (``__``-keys skipped), fixed metadata, written to a temporary file first."""
    from lfvila.atomic import atomic_write

    with atomic_write(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            for ext, data in sample.items():
                if ext.startswith("__"):
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size, info.mode = len(data), 0o444
                tar.addfile(info, io.BytesIO(data))


def model_pixels(batch: dict) -> "torch.Tensor":
    """The video the model gets from a loader batch, back in RGB 0..255: float ``(B, 3, T, H, W)``
    (``batch_to_device`` on the CPU, then the ImageNet normalisation undone), whichever side did
    the crop/resize/flip."""
    import torch

    from lfvila.data import batch_to_device
    from lfvila.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    video = batch_to_device(batch, "cpu")["video"]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    return (video * std + mean) * 255


class CommandPickle:
    """An object whose unpickling runs ``touch PATH`` (``os.system``): what a planted checkpoint
    file would hold. Tests check that loading refuses it and ``PATH`` never appears."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __reduce__(self):
        import os
        import shlex

        return (os.system, (f"touch {shlex.quote(str(self.path))}",))


def rehash_checkpoint_file(checkpoint: str | Path, name: str) -> None:
    """Record file ``name``'s current size and sha256 in the checkpoint's ``meta.json``, as whoever
    planted or altered the file would, so the checkpoint still verifies."""
    import hashlib
    import json

    checkpoint = Path(checkpoint)
    meta = json.loads((checkpoint / "meta.json").read_text())
    data = (checkpoint / name).read_bytes()
    meta["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "meta.json").write_text(json.dumps(meta))


_CLUSTER_START = r"""
set -e
ip link set lo up
BIN=$(dirname "$PYTHON")
COMMON="--num-cpus=1 --object-store-memory=80000000 --disable-usage-stats"
"$BIN/ray" start --head --node-ip-address=127.0.0.1 --port="$RAY_PORT" --include-dashboard=false --temp-dir="$RAY_TMP" $COMMON > "$RAY_TMP/head.log" 2>&1
"$BIN/ray" start --address="$RAY_ADDRESS" --node-ip-address=127.0.0.1 $COMMON > "$RAY_TMP/worker.log" 2>&1
"""


def run_on_loopback_ray_cluster(body: str, home: str | Path, env: dict[str, str], port: int,
                                cwd: str | Path | None = None, timeout: float = 300):
    """Run the bash ``body`` next to a real two-node Ray cluster (head and worker node, one CPU each)
    at ``$RAY_ADDRESS`` = 127.0.0.1:``port``, all inside a network namespace that has only loopback
    and a PID namespace whose end takes every Ray process with it (no ``ray stop``, which would kill
    Ray processes of anyone on the machine). Ray replaces a 127.0.0.1 node address by the machine's
    outward one, so flags alone cannot confine it. ``home`` becomes HOME (a user's
    ``~/.ray/auth_token`` must not change the cluster). Skips the calling test without ``unshare``
    and ``ip``; returns the CompletedProcess (stdout, stderr as text)."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    import unittest

    if shutil.which("unshare") is None or shutil.which("ip") is None:  # pytest reports SkipTest as a skip
        raise unittest.SkipTest("needs util-linux unshare and iproute2 ip to confine Ray to loopback")
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    ray_tmp = tempfile.mkdtemp(prefix="lfvila-ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    full_env = {**os.environ, **env, "PYTHON": sys.executable, "RAY_TMP": ray_tmp, "HOME": str(home),
                "RAY_PORT": str(port), "RAY_ADDRESS": f"127.0.0.1:{port}"}
    try:
        return subprocess.run(["unshare", *user, "--net", "--pid", "--fork", "--mount-proc", "bash", "-c",
                               _CLUSTER_START + body], cwd=cwd, env=full_env, capture_output=True, text=True,
                              timeout=timeout)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
