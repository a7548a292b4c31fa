"""lfvila as an installed package: packaged recipes and sample, a wheel that runs the demo anywhere,
declared dependencies that match the imports."""
from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from lfvila.cli import main
from lfvila.errors import ConfigError
from lfvila.resources import packaged_recipes, resolve_recipe

REPO = Path(__file__).resolve().parents[1]
RESOURCES = REPO / "lfvila" / "resources"
# The checkout's folders users see, each a link to its packaged folder (one copy of each file in git).
LINKS = {"train": "train", "pipelines": "pipelines", "manifests/sample": "sample"}


def test_top_level_folders_are_links_to_the_packaged_ones():
    for link, packaged in LINKS.items():
        path = REPO / link
        assert path.is_symlink(), f"{link} must be a symlink to lfvila/resources/{packaged}"
        assert path.resolve() == (RESOURCES / packaged).resolve()
    assert sorted(packaged_recipes("train")) == sorted(p.stem for p in (REPO / "train").glob("*.yaml"))
    assert "tiny" in packaged_recipes("train") and "lfvila8m" in packaged_recipes("pipelines")


def test_resolve_recipe_by_name_or_checkout_path_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = RESOURCES / "train" / "tiny.yaml"
    for given in ("tiny", "tiny.yaml", "train/tiny.yaml"):
        assert Path(resolve_recipe(given, "train")).resolve() == tiny.resolve()
    assert resolve_recipe(None, "train") is None
    # An existing file wins over the packaged recipe of the same name.
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "tiny.yaml").write_text("task: {stage: 1}\n")
    assert resolve_recipe("train/tiny.yaml", "train") == "train/tiny.yaml"
    for wrong, kind in (("lfvila8m", "train"), ("pipelines/tiny.yaml", "train"), ("tiny", "pipelines"),
                        ("elsewhere/lfvila8m.yaml", "pipelines")):
        with pytest.raises(ConfigError, match=f"packaged {kind} recipes .*: " + ", ".join(packaged_recipes(kind))):
            resolve_recipe(wrong, kind)


def test_cli_reads_packaged_recipes_and_sample_outside_the_checkout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # A packaged corpus recipe by name on the packaged sample metadata: the manifest stage runs.
    sample = RESOURCES / "sample" / "hdvila_sample.jsonl"
    assert main(["build", "--out", "corpus", "--stage", "manifest", "--config", "lfvila8m",
                 "--source", f"hdvila:{sample}"]) == 0
    recorded = json.loads((tmp_path / "corpus" / "corpus.json").read_text())
    assert json.dumps(recorded).count('"min_clips": 4') >= 1
    # The README's train/NAME.yaml form resolves too: the run gets as far as asking for shards.
    capsys.readouterr()
    assert main(["train", "--config", "train/tiny.yaml"]) == 2
    assert "data.train_shards is empty" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Declared dependencies against imports

def _requirement_name(spec: str) -> str:
    return re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports(tree: ast.AST, top_level_only: bool) -> set[str]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_dependencies_match_imports():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {_normal(_requirement_name(s)) for s in project["dependencies"]}
    extras = {k: {_normal(_requirement_name(s)) for s in v} for k, v in project["optional-dependencies"].items()}
    providers = {mod: {_normal(d) for d in dists} for mod, dists in importlib.metadata.packages_distributions().items()}

    anywhere, at_import = set(), set()
    for path in (REPO / "lfvila").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        anywhere |= _imports(tree, top_level_only=False)
        at_import |= {(m, path.relative_to(REPO).as_posix()) for m in _imports(tree, top_level_only=True)}
    third_party = {m for m in anywhere if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "lfvila"}
    imported_dists = set().union(*(providers.get(m.split(".")[0], {m.split(".")[0]}) for m in third_party))
    # tensorboard is what torch.utils.tensorboard (imported by the trainer) needs, not imported by name.
    assert "torch.utils.tensorboard" in third_party
    imported_dists.add("tensorboard")

    # Optional features import their package only when used, and declare it as an extra of their own.
    optional = {"wandb"}
    assert optional <= extras["wandb"] and not optional & core
    assert not [f for m, f in at_import if m.split(".")[0] in optional], "optional packages imported at import time"
    imported_dists -= optional
    assert not core - imported_dists, f"declared but never imported by lfvila: {sorted(core - imported_dists)}"
    assert not imported_dists - core, f"imported by lfvila but not declared: {sorted(imported_dists - core)}"
    assert "nltk" not in core
    # decord and wids are for the benches and the tests only: extras, and never imported by the library.
    assert {"decord2"} <= extras["bench"] and {"wids"} <= extras["dev"]
    assert not {"decord2", "wids"} & core
    assert not [f for m, f in at_import if m.split(".")[0] in ("av", "decord", "wids")], "heavy media imports at import time"


# ---------------------------------------------------------------------------------------------
# A wheel, installed into a fresh virtual environment that cannot see the checkout

def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    return {**env, "PYTHONNOUSERSITE": "1"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Build a wheel from a copy of the sources and install it, without deps, into a fresh venv.

    The venv finds the dependencies through a ``.pth`` line naming this interpreter's site-packages:
    a directory added that way is searched for modules, but its own ``.pth`` files (the editable
    install's finder) are not run, so ``import lfvila`` can only find the wheel's copy.
    """
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "lfvila", src / "lfvila", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(root / "dist")], check=True, cwd=src, env=_clean_env())
    (wheel,) = (root / "dist").glob("lfvila-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "lfvila-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, env=_clean_env())
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return {"wheel": wheel, "venv": venv, "python": python, "lfvila": venv / "bin" / "lfvila", "cwd": elsewhere}


def test_wheel_carries_recipes_and_sample(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    packaged = sorted(p for p in RESOURCES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert {"train/tiny.yaml", "pipelines/lfvila8m.yaml", "sample/hdvila_sample.jsonl", "sample/scenes.jsonl"} <= {
        p.relative_to(RESOURCES).as_posix() for p in packaged}
    missing = [p for p in packaged if "lfvila/" + p.relative_to(REPO / "lfvila").as_posix() not in names]
    assert not missing, f"not in the wheel: {missing}"


def _run_installed(installed, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(installed["lfvila"]), *args], cwd=installed["cwd"], env=_clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def _assert_demo_outputs(out: Path, steps: int) -> None:
    shards = out / "corpus" / "shards"
    assert list(shards.glob("train-*.tar")) and list(shards.glob("val-*.tar"))
    assert (shards / "index.parquet").is_file() and (out / "preview.png").is_file()
    assert (out / "report" / "report.md").is_file()
    ckpt = out / "train" / "checkpoints" / f"step_{steps:08d}"
    assert json.loads((ckpt / "eval.json").read_text())


def test_installed_wheel_runs_the_demo_outside_the_checkout(installed, tmp_path):
    where = subprocess.run([str(installed["python"]), "-c", "import lfvila, lfvila.demo as d, lfvila.sample as s; "
                            "print(lfvila.__file__); print(d.TINY_RECIPE); print(s.SAMPLE_DIR)"],
                           cwd=installed["cwd"], env=_clean_env(), capture_output=True, text=True, check=True)
    for line in where.stdout.split():
        assert Path(line).is_relative_to(installed["venv"]), f"{line} is not the installed copy"
    # A small quick check (12 of the sample's videos give both splits) keeps this in the fast suite.
    out = tmp_path / "demo"
    proc = _run_installed(installed, "demo", "--steps", "1", "--limit-videos", "12", "--workers", "1",
                          "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "quick check: every stage ran" in proc.stdout
    _assert_demo_outputs(out, steps=1)


@pytest.mark.slow
def test_installed_wheel_demo_steps_2(installed, tmp_path):
    """What the issue asks: the whole sample, two steps, from another directory."""
    out = tmp_path / "demo"
    proc = _run_installed(installed, "demo", "--steps", "2", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_demo_outputs(out, steps=2)
