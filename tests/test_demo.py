"""`lfvila demo` end to end: embedded sample -> corpus -> preview/report -> tiny training -> eval."""
from __future__ import annotations

import json

import pytest

from lfvila.cli import main


def test_demo_reduced_writes_everything_it_prints(tmp_path, capsys, bert_dir):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--limit-videos", "16", "--steps", "4",
                 "--set", "trainer.log_every=2", "--set", "data.batch_size=4"]) == 0
    printed = capsys.readouterr().out
    for name in ("p2v_r1", "v2p_r1", "sentence_to_clip_acc", "chance", "tensorboard --logdir"):
        assert name in printed
    assert sorted((out / "corpus" / "shards").glob("train-*.tar")) and sorted((out / "corpus" / "shards").glob("val-*.tar"))
    assert (out / "preview.png").stat().st_size > 0
    assert (out / "report" / "report.md").is_file()
    final = out / "train" / "checkpoints" / "step_00000004"
    metrics = json.loads((final / "eval.json").read_text())
    assert metrics["step"] == 4 and metrics["n_samples"] >= 1
    assert str(final) in printed
    assert list((out / "train" / "tb").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_full_demo_beats_chance(tmp_path, capsys):
    """The real thing (about 10 minutes on 2 cores): every headline figure beats chance."""
    from lfvila.demo import DemoSettings, beats_chance, run_demo

    result = run_demo(tmp_path / "demo", DemoSettings())
    verdict = beats_chance(result.after)
    assert verdict and all(verdict.values()), result.after
