"""The Ray engine on a real two-node Ray cluster confined to loopback; output identical to the local engine.

The cluster runs inside a network namespace that has only loopback
(lfvila.testing.run_on_loopback_ray_cluster says why flags alone cannot confine Ray).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lfvila.build_config import BuildConfig
from lfvila.config import load_config
from lfvila.shards.build import build_shards
from lfvila.shards.fixtures import make_colour_video, sentences_every, write_longform
from lfvila.testing import run_on_loopback_ray_cluster

REPO = Path(__file__).resolve().parents[1]

CLUSTER_BODY = r"""
"$PYTHON" -c "
import os, ray
ray.init(address=os.environ['RAY_ADDRESS'], log_to_driver=False)
nodes = [n for n in ray.nodes() if n['Alive']]
print('RAY_NODES', len(nodes), sorted({n['NodeManagerAddress'] for n in nodes}))
"
"$PYTHON" -m lfvila.cli build --stage shards --out "$OUT" --videos "$VIDEOS" --engine ray --ray-address "$RAY_ADDRESS" --set shards.samples_per_shard=2
"""


@pytest.mark.slow
def test_ray_cluster_build_equals_local_build(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_colour_video(videos / "colour.mp4", 8)
    rows = [{"key": f"r{i}", "video_id": "colour", "sentences": sentences_every(0.2 * i, 0.2 * i + 4, 1.0, "colour")}
            for i in range(6)]
    local, remote = tmp_path / "local", tmp_path / "ray"
    for out in (local, remote):
        write_longform(out / "longform.parquet", rows)
    build_shards(load_config(BuildConfig, None, ["shards.samples_per_shard=2"]), local, videos, workers=1)

    (tmp_path / "home").mkdir()
    proc = run_on_loopback_ray_cluster(CLUSTER_BODY, tmp_path / "home", {"OUT": str(remote), "VIDEOS": str(videos)},
                                       port=6390, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "RAY_NODES 2 ['127.0.0.1']" in proc.stdout
    for name in sorted(p.name for p in (local / "shards").iterdir()):
        assert (remote / "shards" / name).read_bytes() == (local / "shards" / name).read_bytes(), name
    assert sorted(p.name for p in (remote / "shards").iterdir()) == sorted(p.name for p in (local / "shards").iterdir())


LOCAL_RAY_SCRIPT = r"""
import ipaddress, json, os
from pathlib import Path

from lfvila.ray_cluster import ray_session


def ray_processes():
    # This process and every descendant: the local Ray's GCS, raylet, agents and workers.
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry.name))
    found, todo = [os.getpid()], [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def listening(pids):
    inodes = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hexaddr, port = fields[1].split(":")
            raw = bytes.fromhex(hexaddr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # /proc prints 32-bit words little-endian
            ip = ipaddress.ip_address(raw)
            ip = getattr(ip, "ipv4_mapped", None) or ip
            found.append((inodes[fields[9]], str(ip), int(port, 16)))
    return found


with ray_session(None, 1) as ray:
    assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker runs (its gRPC server listens too)
    print("NODES", json.dumps(sorted({n["NodeManagerAddress"] for n in ray.nodes()})))
    print("LISTENING", json.dumps(listening(ray_processes())))
    print("ENV", os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"))
"""


def test_a_local_ray_started_by_lfvila_listens_on_loopback_only(tmp_path):
    """ray_session without an address: every listening socket of Ray's processes is on 127.0.0.1."""
    import ipaddress
    import json

    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs /proc/net")
    home = tmp_path / "home"  # Ray writes its token to ~/.ray/auth_token; a user's token must not matter
    home.mkdir()
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(REPO))
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    proc = subprocess.run([sys.executable, "-c", LOCAL_RAY_SCRIPT], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in proc.stdout.splitlines() if " " in line}
    assert json.loads(lines["NODES"]) == ["127.0.0.1"]
    sockets = json.loads(lines["LISTENING"])
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names and len(sockets) >= 5, sockets  # the servers were found
    assert [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback] == []
    assert lines["ENV"] == "None"  # the driver's environment is restored after the start
    assert (home / ".ray" / "auth_token").is_file()  # Ray's token authentication is on for it (docs say so)
