"""Run video2dataset 1.3.0 on given spans: precise clips, 240 px high, 3 fps, webdataset output.

Executed by the python of the separate venv that bench/video2dataset_env.sh makes (not by lfvila's), as
a subprocess of bench/build_throughput.py, which measures its CPU (this process and all its children):

    /tmp/v2d-venv/bin/python bench/video2dataset_run.py --spans SPANS.json --out DIR [--fps 3 --height 240]
    /tmp/v2d-venv/bin/python bench/video2dataset_run.py --check

SPANS.json is a list of {"path", "start", "end"}. video2dataset's own entry point runs its download stage
on them (local files, ``clip_col``), one process (``processes_count: 1``) and one sample thread
(``thread_count: 1``), with ``ClippingSubsampler(precision="exact")`` (keyframes forced at the cut times and
the video re-encoded, instead of the default stream copy that snaps to keyframes), then
``ResolutionSubsampler(scale, height)`` and ``FrameSubsampler(fps)``. Two things are put right first, at
module level so that video2dataset's spawned worker and logger processes (which re-import this file as
``__mp_main__``) get them too:

- No ``torchaudio`` loads beside the CPU torch 2.13.0 (see video2dataset_env.sh); an empty placeholder
  module stands in for it. video2dataset imports it only in dataloader/audio_decode.py, which
  the download stage never calls.
- video2dataset 1.3.0's download worker reads ``subsamplers["video"][0].encode_formats["video"]``, an
  attribute ``ResolutionSubsampler`` and ``FrameSubsampler`` do not have (they have ``encode_format``): any
  download with either fails its whole shard with an AttributeError. The missing attribute is added,
  ``{"video": "mp4"}``, which is what the writer would be told in any case.
- ``FrameSubsampler`` pops ``streams["video"]`` and sets it again, while the download worker iterates over
  that dict (``for modality in subsampled_streams``): every sample then fails with "RuntimeError:
  dictionary keys changed during iteration". It is given a copy of the dict instead (the worker rebinds
  the name to the returned dict, so the result is the same).
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.metadata
import json
import os
import shutil
import sys
import types

try:
    import torchaudio  # noqa: F401
except ImportError:
    _ta = types.ModuleType("torchaudio")
    _ta.functional = types.ModuleType("torchaudio.functional")
    _ta.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)  # transformers' find_spec needs one
    _ta.functional.__spec__ = importlib.machinery.ModuleSpec("torchaudio.functional", None)
    sys.modules["torchaudio"], sys.modules["torchaudio.functional"] = _ta, _ta.functional

from video2dataset import video2dataset  # noqa: E402
from video2dataset.subsamplers import FrameSubsampler, ResolutionSubsampler  # noqa: E402

for _cls in (ResolutionSubsampler, FrameSubsampler):
    if not hasattr(_cls, "encode_formats"):
        _cls.encode_formats = {"video": "mp4"}
_frame_call = FrameSubsampler.__call__


def _frame_call_on_copy(self, streams, metadata=None):
    return _frame_call(self, dict(streams), metadata)


FrameSubsampler.__call__ = _frame_call_on_copy


def config(fps: float, height: int) -> dict:
    return {
        "subsampling": {
            "ClippingSubsampler": {"args": {"precision": "exact"}},
            "ResolutionSubsampler": {"args": {"resize_mode": "scale", "height": height}},
            "FrameSubsampler": {"args": {"frame_rate": fps}},
        },
        "reading": {"yt_args": {"download_size": 360, "download_audio_rate": 44100, "yt_metadata_args": None},
                    "timeout": 60, "sampler": None},
        "storage": {"number_sample_per_shard": 1000, "oom_shard_count": 5, "captions_are_subtitles": False},
        "distribution": {"processes_count": 1, "thread_count": 1, "subjob_size": 1000,
                         "distributor": "multiprocessing"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans")
    parser.add_argument("--out")
    parser.add_argument("--fps", type=float, default=3.0)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--check", action="store_true", help="print versions and exit")
    args = parser.parse_args()
    if args.check:
        print(json.dumps({"video2dataset": importlib.metadata.version("video2dataset"),
                          "torch": importlib.metadata.version("torch"),
                          "ffmpeg": shutil.which("ffmpeg"),
                          "torchaudio": "placeholder" if not hasattr(sys.modules["torchaudio"], "__file__")
                          else importlib.metadata.version("torchaudio")}))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    spans = json.loads(open(args.spans).read())
    os.makedirs(args.out, exist_ok=True)
    table = pa.table({"url": [s["path"] for s in spans],
                      "clips": [[[float(s["start"]), float(s["end"])]] for s in spans]})
    inp = os.path.join(args.out, "input.parquet")
    pq.write_table(table, inp)
    tmp = os.path.join(args.out, "_dl")
    os.makedirs(tmp, exist_ok=True)
    fps = int(args.fps) if args.fps == int(args.fps) else args.fps
    # incremental_mode stays "incremental" (the output folder is new): "overwrite" in 1.3.0 deletes the
    # output folder after making its _tmp inside it, and every shard then fails ("No such file ... 0.feather").
    try:
        video2dataset(url_list=inp, output_folder=os.path.join(args.out, "dataset"), output_format="webdataset",
                      input_format="parquet", encode_formats={"video": "mp4"}, url_col="url", clip_col="clips",
                      tmp_dir=tmp, config=config(fps, args.height))
    except FileNotFoundError:
        # With no input row (the start-up measurement) it makes no shard, so no dataset/_tmp, and its final
        # fs.rm(dataset/_tmp) raises once everything else (processes, imports, pool) has run.
        if spans:
            raise


if __name__ == "__main__":
    main()
