"""Checkpoint atomicity, keep-last-K, per-rank state and RNG round trips (single process)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lfvila.testing import CommandPickle, rehash_checkpoint_file
from lfvila.trainer import checkpoint as ckpt


def _save(root, step, keep_last=2, world_size=1, rank=0):
    model = {"w": torch.full((3,), float(step))}
    return ckpt.save_checkpoint(
        root, step, rank=rank, world_size=world_size,
        shared=lambda: {"model": model, "train_state": {"step": step}},
        per_rank={"loader": {"position": step}, "rng": ckpt.capture_rng_state()},
        config={"trainer": {"max_steps": 10}}, keep_last=keep_last, barrier=lambda: None)


def test_keep_last_and_latest(tmp_path):
    for step in (2, 4, 6, 8):
        _save(tmp_path, step, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [6, 8]
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step_00000008"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000006", "step_00000008"]
    state = ckpt.load_checkpoint(tmp_path / "step_00000008", rank=0, world_size=1)
    assert state["model"]["w"].tolist() == [8.0, 8.0, 8.0]
    assert state["train_state"]["step"] == 8
    assert state["rank_state"]["loader"] == {"position": 8}
    assert state["meta"]["world_size"] == 1 and state["meta"]["lfvila_version"]
    assert (tmp_path / "step_00000008" / "config.yaml").read_text().startswith("trainer:")


def test_incomplete_checkpoints_are_never_picked(tmp_path):
    _save(tmp_path, 3)
    # A run killed while saving leaves a hidden temporary directory; one killed before meta.json
    # was written (impossible with the rename, but a copied tree could look like that) lacks meta.
    (tmp_path / ".step_00000005.tmp").mkdir()
    (tmp_path / ".step_00000005.tmp" / "model.pt").write_bytes(b"partial")
    (tmp_path / "step_00000009").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step_00000003"
    # The next save of that step replaces the leftover temporary directory.
    _save(tmp_path, 5, keep_last=5)
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step_00000005"
    assert not (tmp_path / ".step_00000005.tmp").exists()


def test_world_size_must_match(tmp_path):
    _save(tmp_path, 1)
    with pytest.raises(ValueError, match="world size"):
        ckpt.load_checkpoint(tmp_path / "step_00000001", rank=0, world_size=2)
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        ckpt.load_checkpoint(tmp_path / "step_00000002", rank=0, world_size=1)


def test_rng_state_round_trip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = ckpt.capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3).tolist())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    ckpt.restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(3).tolist()) == first


def test_init_from_reads_dir_or_file(tmp_path):
    path = _save(tmp_path, 7)
    assert ckpt.load_model_weights(path)["w"].tolist() == [7.0] * 3
    assert ckpt.load_model_weights(path / "model.pt")["w"].tolist() == [7.0] * 3
    with pytest.raises(ValueError, match="does not exist"):
        ckpt.load_model_weights(tmp_path / "nope")


def test_init_from_run_dir_takes_newest(tmp_path):
    for step in (1, 2):
        _save(tmp_path / "run" / "checkpoints", step)
    assert ckpt.load_model_weights(tmp_path / "run")["w"].tolist() == [2.0] * 3
    with pytest.raises(ValueError, match="no complete checkpoint"):
        ckpt.load_model_weights(tmp_path)


def test_resumed_loss_log_keeps_one_record_per_step(tmp_path):
    from lfvila.trainer.loop import drop_loss_records_after

    log = tmp_path / "losses.jsonl"
    log.write_text("".join(f'{{"step": {s}, "loss": {s / 10}}}\n' for s in range(1, 6)) + '{"step": 6, "lo')
    drop_loss_records_after(log, 3)  # resumed from the checkpoint of step 3; 4, 5 and a torn 6 go
    assert [line for line in log.read_text().splitlines()] == [f'{{"step": {s}, "loss": {s / 10}}}' for s in (1, 2, 3)]
    drop_loss_records_after(tmp_path / "missing.jsonl", 3)  # no log yet: nothing to do
    assert not (tmp_path / "missing.jsonl").exists()


def test_rank_state_is_tensors_and_plain_values_and_loads_weights_only(tmp_path):
    """The RNG states go through torch.load(weights_only=True) and still restore every stream."""
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    np.random.randn()  # a cached Gaussian is part of NumPy's state too
    path = _save(tmp_path, 1)
    expected = (random.random(), np.random.randn(), torch.rand(3).tolist())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    state = torch.load(path / "rank_00000.pt", weights_only=True)
    ckpt.restore_rng_state(state["rng"])
    assert (random.random(), np.random.randn(), torch.rand(3).tolist()) == expected


@pytest.mark.parametrize("name", ["rank_00000.pt", "model.pt", "train_state.pt"])
def test_a_pickle_that_runs_code_is_refused_not_run(tmp_path, name):
    path = _save(tmp_path / "ckpts", 3)
    marker = tmp_path / "marker"
    torch.save({"rng": CommandPickle(marker), "loader": {}, "step": 3}, path / name)
    # checksums not updated: the file is damaged as far as verification goes
    assert ckpt.verify_checkpoint(path)
    with pytest.raises(ckpt.CheckpointError, match="damaged"):
        ckpt.load_checkpoint(path, rank=0, world_size=1)
    rehash_checkpoint_file(path, name)
    assert ckpt.verify_checkpoint(path) == []
    with pytest.raises(ckpt.CheckpointError, match=rf"{name} holds a pickled object .*\(posix.system\): refused"):
        ckpt.load_checkpoint(path, rank=0, world_size=1)
    if name == "model.pt":
        with pytest.raises(ckpt.CheckpointError, match="holds a pickled object"):
            ckpt.load_model_weights(path)
    assert not marker.exists()


def _truncate(file):
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _flip_byte(file):
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def _edit_meta(change):
    def edit(file):
        import json

        meta = json.loads(file.read_text())
        change(meta)
        file.write_text(json.dumps(meta))
    return edit


def _to_dir(file):
    file.unlink()
    file.mkdir()


CORRUPTIONS = {  # name: (file damaged, how, what the warning says)
    "model truncated": ("model.pt", _truncate, "truncated?"),
    "rank file truncated": ("rank_00000.pt", _truncate, "truncated?"),
    "train state zero bytes": ("train_state.pt", lambda f: f.write_bytes(b""), "is 0 bytes"),
    "model missing": ("model.pt", lambda f: f.unlink(), "is missing"),
    "rank file missing": ("rank_00000.pt", lambda f: f.unlink(), "is missing"),
    "config missing": ("config.yaml", lambda f: f.unlink(), "is missing"),
    "model byte flipped": ("model.pt", _flip_byte, "(corrupt)"),
    "model is a directory": ("model.pt", _to_dir, "not a regular file"),
    "meta truncated": ("meta.json", _truncate, "not valid JSON"),
    "meta zero bytes": ("meta.json", lambda f: f.write_bytes(b""), "is empty"),
    "meta missing": ("meta.json", lambda f: f.unlink(), "is missing"),
    "meta not an object": ("meta.json", lambda f: f.write_text("[]"), "not a JSON object"),
    "meta without checksums": ("meta.json", _edit_meta(lambda m: m.pop("files")), "lists no file sizes"),
    "meta of another step": ("meta.json", _edit_meta(lambda m: m.update(step=2)), "says step 2"),
    "meta drops a rank file": ("meta.json", _edit_meta(lambda m: m["files"].pop("rank_00000.pt")),
                               "does not list rank_00000.pt"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_intact_one(tmp_path, caplog, corruption):
    name, damage, says = CORRUPTIONS[corruption]
    _save(tmp_path, 2, keep_last=5)
    newest = _save(tmp_path, 4, keep_last=5)
    damage(newest / name)
    with caplog.at_level("WARNING", logger="lfvila.trainer.checkpoint"):
        assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step_00000002"
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert str(newest / name) in warning and says in warning, warning
    with pytest.raises(ckpt.CheckpointError, match="damaged"):
        ckpt.load_checkpoint(newest, rank=0, world_size=1) if name != "meta.json" else ckpt.require_intact(newest)
    # with the older one damaged too, nothing is chosen: the error names both checkpoints' files
    (tmp_path / "step_00000002" / "model.pt").unlink()
    with pytest.raises(ckpt.CheckpointError) as error:
        ckpt.latest_checkpoint(tmp_path)
    assert str(newest / name) in str(error.value) and says in str(error.value)
    assert str(tmp_path / "step_00000002" / "model.pt") + " is missing" in str(error.value)


def test_an_unreadable_file_that_verifies_is_named(tmp_path):
    path = _save(tmp_path, 1)
    _truncate(path / "train_state.pt")
    rehash_checkpoint_file(path, "train_state.pt")  # e.g. damaged before it was hashed
    with pytest.raises(ckpt.CheckpointError, match=r"train_state.pt is not a readable torch file"):
        ckpt.load_checkpoint(path, rank=0, world_size=1)


def test_meta_records_every_file_and_the_save_leaves_nothing_behind(tmp_path):
    import hashlib
    import json

    path = _save(tmp_path, 6)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format"] == ckpt.FORMAT and meta["step"] == 6
    assert sorted(meta["files"]) == ["config.yaml", "model.pt", "rank_00000.pt", "train_state.pt"]
    for name, record in meta["files"].items():
        data = (path / name).read_bytes()
        assert record == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000006"]


def test_fuzz_any_meta_json_is_a_list_of_problems_never_a_crash(tmp_path_factory):
    """Whatever meta.json holds (any JSON, or a valid record with any field replaced), verification
    returns the problems naming meta.json or a file, and a checkpoint it passes is the intact one."""
    import json

    from hypothesis import given, strategies as st

    root = tmp_path_factory.mktemp("fuzz_meta")
    path = _save(root, 5)
    original = json.loads((path / "meta.json").read_text())
    scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=8)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=14), inner, max_size=3), max_leaves=8)
    names = st.sampled_from(["model.pt", "rank_00000.pt", "config.yaml", "../meta.json", "", "x"]) | st.text(max_size=6)
    edits = st.one_of(
        values.map(lambda v: ("whole", v)),
        st.tuples(st.sampled_from(["format", "step", "world_size", "files"]), values).map(lambda t: ("field",) + t),
        st.tuples(names, values).map(lambda t: ("file",) + t),
        st.tuples(names, st.sampled_from(["size", "sha256"]), values).map(lambda t: ("record",) + t),
    )

    @given(edits)
    def check(edit):
        meta = json.loads(json.dumps(original))
        if edit[0] == "whole":
            meta = edit[1]
        elif edit[0] == "field":
            meta[edit[1]] = edit[2]
        elif edit[0] == "file":
            meta["files"][edit[1]] = edit[2]
        elif edit[1] in meta["files"]:
            meta["files"][edit[1]][edit[2]] = edit[3]
        (path / "meta.json").write_text(json.dumps(meta))
        problems = ckpt.verify_checkpoint(path)
        assert isinstance(problems, list) and all(isinstance(p, str) and str(path) in p for p in problems)
        if not problems:  # only what leaves every recorded file as it is
            assert {k: meta[k] for k in ("format", "step", "world_size")} == {
                k: original[k] for k in ("format", "step", "world_size")}
            assert all(meta["files"].get(k) == v for k, v in original["files"].items())

    try:
        check()
    finally:
        (path / "meta.json").write_text(json.dumps(original))


def test_fuzz_damaged_pt_bytes_are_caught_by_the_checksum_and_never_crash_the_load(tmp_path_factory):
    """Bytes of a .pt overwritten: verification always flags it, and reading it anyway (as after a
    forged meta.json) either returns plain data or raises CheckpointError naming the file."""
    from hypothesis import given, strategies as st

    root = tmp_path_factory.mktemp("fuzz_pt")
    path = _save(root, 7)
    originals = {name: (path / name).read_bytes() for name in ("model.pt", "rank_00000.pt", "train_state.pt")}

    @given(st.sampled_from(sorted(originals)), st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                   st.integers(0, 255)), min_size=1, max_size=4),
           st.none() | st.floats(0, 1))
    def check(name, writes, cut):
        data = bytearray(originals[name])
        for where, byte in writes:
            data[int(where * len(data))] = byte
        if cut is not None:
            data = data[: int(cut * len(data))]
        if bytes(data) == originals[name]:
            return
        (path / name).write_bytes(bytes(data))
        try:
            assert ckpt.verify_checkpoint(path), "a changed file verified"
            try:
                ckpt.load_file(path / name)
            except ckpt.CheckpointError as exc:
                assert str(path / name) in str(exc)
        finally:
            (path / name).write_bytes(originals[name])

    check()
