"""Files shipped inside the package: the recipes and the demo's sample sources.

- ``train/*.yaml``: training recipes (``lfvila train --config``);
- ``pipelines/*.yaml``: corpus recipes (``lfvila build`` / ``lfvila download --config``);
- ``sample/``: the demo's HD-VILA-format metadata and scene list (:mod:`lfvila.sample`).

They live in the package so that a wheel or a non-editable ``pip install .`` carries them. The
checkout's top-level ``train/``, ``pipelines/`` and ``manifests/sample/`` are symlinks to these
folders, so each file exists once in git and the paths the README uses keep working there.

Files are found with :mod:`importlib.resources` and handed out as file-system paths: pip installs
lfvila as plain files (never as a zip), and the recipes' readers (``open``, ``ffmpeg``) need paths.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path, PurePath

from lfvila.errors import ConfigError

RECIPE_KINDS = ("train", "pipelines")
RECIPE_SUFFIX = ".yaml"


def resource_path(*parts: str) -> Path:
    """The packaged file or folder ``parts`` (e.g. ``"train", "tiny.yaml"``) as a path."""
    node = resources.files(__name__).joinpath("/".join(parts))
    if not isinstance(node, Path):
        raise RuntimeError(f"lfvila's package data is not on the file system ({node!r}); install lfvila with pip")
    return node


def packaged_recipes(kind: str) -> dict[str, Path]:
    """Name (file stem) -> path of every packaged recipe of ``kind`` ("train" or "pipelines")."""
    if kind not in RECIPE_KINDS:
        raise ValueError(f"recipe kind must be one of {RECIPE_KINDS}, got {kind!r}")
    return {p.stem: p for p in sorted(resource_path(kind).glob("*" + RECIPE_SUFFIX))}


def recipe_help(kind: str) -> str:
    """The ``--config`` help of a command reading ``kind`` recipes."""
    names = ", ".join(packaged_recipes(kind))
    return f"recipe: a YAML file, or a packaged one by name ({names}); {kind}/NAME.yaml works from any directory"


def resolve_recipe(path: str | os.PathLike | None, kind: str | None) -> str | os.PathLike | None:
    """The recipe file a ``--config`` value names.

    An existing file is used as given (relative paths from the working directory), so a user's own
    ``train/tiny.yaml`` wins. Otherwise, for a recipe ``kind``, a packaged recipe is looked up by name
    (``tiny`` or ``tiny.yaml``) or by its path in the checkout (``train/tiny.yaml``): the README's
    commands then work from any directory, with any install. Anything else is a :class:`ConfigError`
    that lists the packaged recipes of that kind. ``None`` (no ``--config``) stays ``None``.
    """
    if path is None or kind is None or Path(path).is_file():
        return path
    recipes = packaged_recipes(kind)
    parts = PurePath(path).parts
    if (len(parts) == 2 and parts[0] == kind) or len(parts) == 1:
        name = parts[-1][:-len(RECIPE_SUFFIX)] if parts[-1].endswith(RECIPE_SUFFIX) else parts[-1]
        if name in recipes:
            return recipes[name]
    raise ConfigError(f"config file {path} does not exist; packaged {kind} recipes (--config NAME): "
                      f"{', '.join(recipes)}")
