"""`lfvila train` through the console script: data checked first, summaries, train.log, Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lfvila.testing import write_synthetic_shards

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "train" / "tiny.yaml")


def lfvila(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lfvila.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, **kwargs)


def small_run_args(shards: dict[str, list[str]], out: Path, *extra: str) -> list[str]:
    return ["train", "--config", TINY, "--set", f"data.train_shards={json.dumps(shards['train'])}",
            "--set", f"data.val_shards={json.dumps(shards['val'])}", "--set", "data.batch_size=4",
            "--set", "data.num_workers=1", "--set", f"trainer.out_dir={out}", *extra]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, list[str]]:
    root = tmp_path_factory.mktemp("train_cli_shards")
    return {"train": write_synthetic_shards(root, n_samples=8, samples_per_shard=4, split="train", seed=0),
            "val": write_synthetic_shards(root, n_samples=4, samples_per_shard=4, split="val", seed=1)}


def test_no_shard_found_is_a_one_line_error_before_the_model_is_built(tmp_path):
    out = tmp_path / "run"
    result = lfvila("train", "--config", TINY, "--set", f"data.train_shards={tmp_path}/train-{{000000..000002}}.tar",
                    "--set", f"trainer.out_dir={out}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("lfvila train: error: no readable train shard")
    assert "0 of 3 shards found, 3 missing" in result.stderr
    assert "Traceback" not in result.stderr and "model:" not in result.stderr
    assert not out.exists()


def test_globs_are_refused_with_the_brace_pattern_to_use(tmp_path, shards):
    pattern = str(Path(shards["train"][0]).parent / "train-*.tar")
    result = lfvila("train", "--config", TINY, "--set", f"data.train_shards={pattern}",
                    "--set", f"trainer.out_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.startswith("lfvila train: error: ")
    assert "globs are not supported" in result.stderr and "{000000..000009}" in result.stderr


def test_missing_val_shards_fail_before_training(tmp_path, shards):
    result = lfvila(*small_run_args({"train": shards["train"], "val": [str(tmp_path / "val-000000.tar")]},
                                    tmp_path / "run"))
    assert result.returncode == 2
    assert "no readable val shard" in result.stderr and "1 missing" in result.stderr


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, shards) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("short_run") / "run"
    # expected_minutes far below what any machine needs: the run says so and still trains every step
    result = lfvila(*small_run_args(shards, out, "--set", "trainer.max_steps=4", "--set", "trainer.log_every=2",
                                    "--set", "trainer.expected_minutes=0.001"))
    return out, result


def test_short_run_prints_start_and_end_summaries_and_writes_train_log(short_run):
    out, result = short_run
    assert result.returncode == 0, result.stderr
    err = result.stderr
    for text in (f"config: {TINY} with 8 --set override(s); stage 1; world size 1 on cpu",
                 "M parameters", "data train: 2 of 2 shards found; 8 samples",
                 "data val: 1 of 1 shards found; 4 samples", "slower than expected", "finished: step 4/4",
                 "final losses (mean of the last log window, to step 4): loss ",
                 f"checkpoint: {out / 'checkpoints' / 'step_00000004'}", "eval: n_samples 4",
                 f"log: {out / 'train.log'}"):
        assert text in err, text
    log = (out / "train.log").read_text()
    for text in ("config: ", "data train: 2 of 2 shards found", "step 4/4 | loss", "finished: step 4/4"):
        assert text in log, text


def test_ctrl_c_names_the_last_checkpoint_and_the_command_to_continue(tmp_path, shards):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = small_run_args(shards, out, "--set", "trainer.max_steps=10000", "--set", "trainer.ckpt_every=2",
                          "--set", "trainer.log_every=1")
    proc = subprocess.Popen([sys.executable, "-m", "lfvila.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not list((out / "checkpoints").glob("step_*/meta.json")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [line for line in err.splitlines() if "interrupted at step" in line]
    assert len(lines) == 1
    assert "last checkpoint " + str(out / "checkpoints" / "step_0000000") in lines[0]
    assert f"continue with: lfvila train --config {TINY} " in lines[0] and lines[0].endswith("--resume auto")
    assert "interrupted at step" in (out / "train.log").read_text()


def test_eval_of_a_run_dir_prints_the_table_and_keeps_the_runs_own_eval_json(short_run, shards, tmp_path):
    out, trained = short_run
    assert trained.returncode == 0, trained.stderr
    final = out / "checkpoints" / "step_00000004"
    own = (final / "eval.json").read_bytes()
    result = lfvila("eval", "--checkpoint", str(out), "--data", shards["val"][0], "--set", "data.num_workers=0")
    assert result.returncode == 0, result.stderr
    printed = result.stdout
    assert f"checkpoint {final} (step 4), 4 samples from {shards['val'][0]}" in printed
    header = next(line for line in printed.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "value", "chance"]
    row = next(line for line in printed.splitlines() if line.startswith("p2v_r1 "))
    assert row.split()[1:] == [f"{float(row.split()[1]):.2f}", "25.00"]  # 2 decimals; chance 1 of 4
    assert (final / "eval.json").read_bytes() == own
    written = [p for p in final.glob("eval-*.json")]
    assert len(written) == 1 and f"written to {written[0]}" in printed
    record = json.loads(written[0].read_text())
    assert record["checkpoint"] == str(final) and record["val_shards"] == shards["val"][0]
    assert record["n_samples"] == 4 and record["step"] == 4


def test_eval_errors_are_one_line_with_the_reason(short_run, tmp_path):
    from lfvila.testing import write_sample_tar

    out, _ = short_run
    missing = lfvila("eval", "--checkpoint", str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr == f"lfvila eval: error: {tmp_path / 'nope'} does not exist\n"
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    not_ckpt = lfvila("eval", "--checkpoint", str(empty_dir))
    assert not_ckpt.returncode == 2 and "holds no complete checkpoint" in not_ckpt.stderr
    no_data = lfvila("eval", "--checkpoint", str(out), "--data", str(tmp_path / "val-000000.tar"))
    assert no_data.returncode == 2 and "no readable val shard" in no_data.stderr and "1 missing" in no_data.stderr
    # a shard whose only sample is malformed: the loader skips it, so 0 samples are evaluated
    bad = tmp_path / "bad-000000.tar"
    write_sample_tar(bad, [{"__key__": "bad_000000", "json": b"not json", "0000.jpg": b"not a jpeg"}])
    zero = lfvila("eval", "--checkpoint", str(out), "--data", str(bad), "--set", "data.num_workers=0")
    assert zero.returncode == 1, zero.stderr
    errors = [line for line in zero.stderr.splitlines() if line.startswith("lfvila eval: error:")]
    assert len(errors) == 1 and "0 samples evaluated" in errors[0]
    assert "Traceback" not in zero.stderr + no_data.stderr + not_ckpt.stderr


def test_killed_before_the_first_checkpoint_the_rerun_logs_each_step_once(tmp_path, shards):
    """SIGKILL after 3 logged steps and before any checkpoint; --resume auto starts from step 0 and
    must rewrite losses.jsonl, not append steps 1-3 a second time."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = small_run_args(shards, out, "--set", "data.val_shards=''", "--set", "trainer.max_steps=5",
                          "--set", "trainer.ckpt_every=1000", "--set", "trainer.log_every=1",
                          "--set", "trainer.tensorboard=false", "--resume", "auto")
    proc = subprocess.Popen([sys.executable, "-m", "lfvila.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    losses = out / "losses.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (losses.exists() and len(losses.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-4000:]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its loader worker
    finally:
        proc.wait()
    assert not list((out / "checkpoints").glob("step_*")), "the kill came after the final checkpoint"
    logged = [json.loads(line)["step"] for line in losses.read_text().splitlines() if line.endswith("}")]
    assert logged[:3] == [1, 2, 3]
    result = lfvila(*args)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["step"] for line in losses.read_text().splitlines()] == [1, 2, 3, 4, 5]


def _steps(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]


def test_resume_auto_falls_back_past_a_damaged_checkpoint_and_refuses_one_that_runs_code(tmp_path, shards):
    import torch

    from lfvila.testing import CommandPickle, rehash_checkpoint_file

    out = tmp_path / "run"
    args = small_run_args(shards, out, "--set", "data.val_shards=''", "--set", "trainer.max_steps=4",
                          "--set", "trainer.ckpt_every=2", "--set", "trainer.log_every=1",
                          "--set", "trainer.keep_last=3", "--set", "trainer.tensorboard=false")
    first = lfvila(*args)
    assert first.returncode == 0, first.stderr
    reference = _steps(out)
    older, newest = out / "checkpoints" / "step_00000002", out / "checkpoints" / "step_00000004"
    model = newest / "model.pt"
    model.write_bytes(model.read_bytes()[:1000])  # e.g. a copy cut short

    resumed = lfvila(*args, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipping damaged checkpoint {newest} ({model} is 1000 bytes" in resumed.stderr
    assert f"resumed from {older} at step 2" in resumed.stderr
    assert _steps(out) == reference  # steps 3 and 4 again, bit for bit, each once

    # the re-written step 4 gets a rank file whose unpickling runs a command, checksums made to match
    marker = tmp_path / "marker"
    rank = newest / "rank_00000.pt"
    torch.save({"rng": CommandPickle(marker), "loader": {}, "step": 4}, rank)
    rehash_checkpoint_file(newest, "rank_00000.pt")
    evil = lfvila(*args, "--resume", "auto")
    assert evil.returncode == 2, evil.stderr
    assert f"lfvila train: error: {rank} holds a pickled object" in evil.stderr and "refused" in evil.stderr
    assert "Traceback" not in evil.stderr and not marker.exists()
    # plain values, but not what lfvila wrote: an error naming the file and the part, no traceback
    torch.save({"rng": {"python": 5}, "loader": {"format": "?"}, "step": 4}, rank)
    rehash_checkpoint_file(newest, "rank_00000.pt")
    odd = lfvila(*args, "--resume", "auto")
    assert odd.returncode == 2, odd.stderr
    assert f"lfvila train: error: {rank}: cannot restore the loader position from it" in odd.stderr
    assert "Traceback" not in odd.stderr
    # (nothing intact at all: one error naming every damaged file, in test_trainer_checkpoint.py)


def _planted_checkpoint(short_run, tmp_path: Path, val_shards) -> Path:
    """A copy of the short run's final checkpoint whose config.yaml names ``val_shards``, its
    checksum in meta.json updated (as whoever planted it would), so it verifies."""
    import shutil

    import yaml

    from lfvila.testing import rehash_checkpoint_file

    out, trained = short_run
    assert trained.returncode == 0, trained.stderr
    ckpt = tmp_path / "step_00000004"
    shutil.copytree(out / "checkpoints" / "step_00000004", ckpt)
    config = yaml.safe_load((ckpt / "config.yaml").read_text())
    config["data"]["val_shards"] = val_shards
    (ckpt / "config.yaml").write_text(yaml.safe_dump(config))
    rehash_checkpoint_file(ckpt, "config.yaml")
    return ckpt


def test_eval_never_runs_a_pipe_command_from_a_checkpoints_config(short_run, shards, tmp_path):
    marker = tmp_path / "marker"
    command = f"pipe:touch {marker}; cat {shards['val'][0]}"
    ckpt = _planted_checkpoint(short_run, tmp_path, command)
    refused = lfvila("eval", "--checkpoint", str(ckpt))
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith(f"lfvila eval: error: {ckpt / 'config.yaml'}: data.val_shards holds "
                                     f"{command!r}, which would run a command")
    assert "--data 'pipe:touch" in refused.stderr and "Traceback" not in refused.stderr
    assert not marker.exists()
    # the same command given by the user (here in the user's own config file) is theirs to run
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(json.dumps({"data": {"val_shards": command}}))
    mine = lfvila("eval", "--checkpoint", str(ckpt), "--config", str(recipe), "--set", "data.num_workers=0")
    assert mine.returncode == 0, mine.stderr
    assert marker.exists() and "4 samples from pipe:touch" in mine.stdout


def test_checkpoint_val_shards_that_would_run_a_command_are_refused_in_any_spelling(tmp_path):
    import shutil

    from lfvila.errors import ConfigError
    from lfvila.trainer.evaluate import checkpoint_eval_config

    shutil.copy(TINY, tmp_path / "config.yaml")

    def val_shards(saved, **kwargs):
        import yaml

        config = yaml.safe_load(Path(TINY).read_text())
        config["data"]["val_shards"] = saved
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        return checkpoint_eval_config(tmp_path, **kwargs).data.val_shards

    for saved in ["pipe:touch x", " PIPE:touch x", "{a.tar,pipe:touch x}", ["a.tar", "pipe:touch x"],
                  "a.tar::pipe:touch x", "gs://bucket/a.tar", "Pipe:touch x"]:
        with pytest.raises(ConfigError, match="which would run a command"):
            val_shards(saved)
    for saved in ["val-{000000..000001}.tar", "file:///data/a.tar", "https://host/a.tar", ["a.tar", "b.tar"],
                  "/data/pipe:x.tar"]:
        assert val_shards(saved) == saved
    # the user's own values are used as given, whatever form the override takes
    assert val_shards("pipe:x", val_shards="pipe:cat a.tar") == "pipe:cat a.tar"
    assert val_shards("pipe:x", overrides=["data.val_shards=pipe:cat b.tar"]) == "pipe:cat b.tar"
    assert val_shards("pipe:x", overrides=['data={"val_shards": "c.tar"}']) == "c.tar"
