#!/usr/bin/env bash
# A separate venv with video2dataset 1.3.0 for bench/build_throughput.py --video2dataset-python, outside the repo.
#
#     bash bench/video2dataset_env.sh [/tmp/v2d-venv]
#     .venv/bin/python bench/build_throughput.py --video2dataset-python /tmp/v2d-venv/bin/python
#
# video2dataset 1.3.0 pins torch==2.1.2, torchaudio==2.1.2, torchdata==0.7.1, transformers==4.37.1,
# bitsandbytes, decord, wandb, ... ; installing it with its dependencies would pull a CUDA torch of several
# GB. So: the local CPU torch 2.13.0 (every pip call constrained to it), video2dataset with --no-deps, then
# the packages that `import video2dataset` and its local-file -> clip -> resize -> fps -> webdataset path
# need, read from its code (main.py imports every worker and subsampler, so captioning/optical-flow/
# dataloader modules are imported even though this path never calls them). Two cannot be had beside
# torch 2.13.0: torchaudio (the newest, 2.11.1, asks for torch>=2.11 and installs, but its _torchaudio.so
# fails to load against torch 2.13.0: "OSError: Could not load this library"; no release is built for it) and
# torchdata 0.7.1 (pins torch 2.1.2); torchdata 0.9.0 (torch>=2, the last release with datapipes) stands
# in, and torchaudio is left out: bench/video2dataset_run.py puts an empty placeholder module in its place
# (imported by video2dataset's dataloader/audio_decode.py, never called on this path). Not installed
# (never imported on this path): bitsandbytes, accelerate, scipy, soundfile, timeout-decorator, Pillow,
# whisperx (pip then prints a dependency-conflict ERROR for these and the pins; it is expected). numpy < 2 as
# video2dataset pins it, so pyarrow < 20 (newer ones refuse numpy 1 at import). About 1.8 GB.
# video2dataset calls `ffmpeg` from PATH; the venv's bin/ffmpeg is a link to imageio-ffmpeg's build, the
# same binary lfvila uses.
set -euo pipefail
VENV=${1:-/tmp/v2d-venv}
HERE=$(cd "$(dirname "$0")" && pwd)
python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
CONS="$VENV/constraints.txt"
printf 'torch==2.13.0\nnumpy<2\n' > "$CONS"
"${PIP[@]}" -c "$CONS" torch==2.13.0
"${PIP[@]}" --no-deps video2dataset==1.3.0
"${PIP[@]}" -c "$CONS" \
  'fire>=0.4.0,<0.6.0' fsspec omegaconf pyyaml tqdm requests 'pyarrow<20' pandas webdataset braceexpand \
  ffmpeg-python yt-dlp webvtt-py wandb einops 'transformers==4.37.1' 'scenedetect==0.6.2' \
  'opencv-python-headless<4.11' langdetect decord 'torchdata==0.9.0' imageio-ffmpeg
ln -sf "$("$VENV/bin/python" -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')" "$VENV/bin/ffmpeg"
PATH="$VENV/bin:$PATH" "$VENV/bin/python" "$HERE/video2dataset_run.py" --check
