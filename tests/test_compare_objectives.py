"""bench/compare_objectives.py end to end at its smallest size: a 30-video demo corpus, 2 training steps
per objective, the shuffle test, the markdown table (figures at 2 steps are not meant to beat chance)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compare_objectives", REPO / "bench" / "compare_objectives.py")
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


@pytest.mark.slow
def test_comparison_runs_end_to_end_and_writes_the_table(tmp_path, capsys):
    assert compare.main(["--out", str(tmp_path), "--steps", "2", "--limit-videos", "30"]) == 0
    table = (tmp_path / "comparison.md").read_text()
    trained = [(title, name) for title, name, recipe in compare.OBJECTIVES if recipe.is_file()]
    assert trained and trained[0][0] == "LF-VILA"
    header = table.splitlines()[0]
    for title, name in trained:
        assert f"| {title} | {title} shuffled |" in header
        record = json.loads((tmp_path / "eval" / f"{name}.shuffle_test.json").read_text())
        assert record["shuffle_seed"] == 0 and record["metrics"]["in_order"]["step"] == 2
    for name in compare.ROWS:
        assert f"| `{name}` |" in table
    assert "Made by: `PYTHONPATH=$PWD python bench/compare_objectives.py --out" in table
    printed = capsys.readouterr().out
    assert "$ lfvila train --config train/tiny.yaml --resume auto" in printed
    assert "$ lfvila eval --checkpoint" in printed and "--shuffle-test" in printed
    if len(trained) < len(compare.OBJECTIVES):
        assert "skipped, this checkout has no" in printed
