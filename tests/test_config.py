from dataclasses import dataclass, field

import pytest

from lfvila.build_config import BuildConfig
from lfvila.config import from_dict, load_config, to_dict, write_config


@dataclass
class Inner:
    window: tuple[int, int, int] = (2, 3, 5)
    names: list[str] = field(default_factory=list)
    rate: float = 0.5


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    stages: tuple[tuple[int, int], ...] = ((1, 2),)


def test_round_trip_and_types():
    cfg = from_dict(Outer, {"inner": {"window": [4, 3, 5], "rate": 1}, "stages": [[1, 2], [3, 4]]})
    assert cfg.inner.window == (4, 3, 5) and isinstance(cfg.inner.rate, float)
    assert cfg.stages == ((1, 2), (3, 4))
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_unknown_key_names_it():
    with pytest.raises(ValueError, match="widnow"):
        from_dict(Outer, {"inner": {"widnow": [1, 1, 1]}})


def test_wrong_type_names_field():
    with pytest.raises(ValueError, match="inner.rate"):
        from_dict(Outer, {"inner": {"rate": "fast"}})


def test_yaml_recipe_overrides_and_write(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("manifest:\n  min_clips: 5\n")
    cfg = load_config(BuildConfig, recipe, ["video.fps=2", "manifest.val_fraction=0.1"])
    assert cfg.manifest.min_clips == 5 and cfg.video.fps == 2.0 and cfg.manifest.val_fraction == 0.1
    write_config(cfg, tmp_path / "c.json")
    assert load_config(BuildConfig, tmp_path / "c.json") == cfg  # JSON is YAML


def test_validation_raises_value_error():
    with pytest.raises(ValueError, match="min_clips"):
        load_config(BuildConfig, None, ["manifest.min_clips=0"])


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    @dataclass
    class Optim:
        lr: float = 1.0

    recipe = tmp_path / "o.yaml"
    recipe.write_text("lr: 5e-4\n")  # YAML 1.1 reads this as a string
    assert load_config(Optim, recipe).lr == 5e-4
    with pytest.raises(ValueError, match="lr"):
        from_dict(Optim, {"lr": "fast"})


# One value per setting: the data section says how many frames a clip has, how many frames a
# sample has and how long a sentence is; the model's copies are derived, or must agree.
def _train_config(overrides):
    from lfvila.resources import resource_path
    from lfvila.trainer.config import TrainConfig

    return load_config(TrainConfig, resource_path("train", "tiny.yaml"), overrides)


def test_model_settings_are_derived_from_the_data_section():
    cfg = _train_config(["data.frames_per_sentence=3", "data.n_sentences=2", "data.max_tokens=20"])
    assert (cfg.model.frames_per_clip, cfg.model.max_frames, cfg.model.text.max_tokens) == (3, 6, 20)
    # The resolved tree (written next to checkpoints) loads back to the same config.
    from lfvila.trainer.config import TrainConfig
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("override, message", [
    ("model.frames_per_clip=4", "model.frames_per_clip .4. differs from data.frames_per_sentence .2."),
    ("model.max_frames=4", "model.max_frames .4. is less than the 8 frames"),
    ("model.text.max_tokens=8", r"model.text.max_tokens .8. is less than data.max_tokens .16."),
])
def test_model_settings_that_disagree_with_the_data_are_an_error(override, message):
    from lfvila.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _train_config([override])


def test_model_settings_may_exceed_what_a_sample_needs():
    # A checkpoint fixes the temporal embedding's length; a shorter sample still fits.
    cfg = _train_config(["model.max_frames=32", "model.text.max_tokens=50"])
    assert (cfg.model.max_frames, cfg.model.text.max_tokens) == (32, 50)


def test_a_model_without_a_recipe_needs_its_clip_length():
    from lfvila.models.lfvila import LFVILA, ModelConfig

    with pytest.raises(ValueError, match="model.frames_per_clip is unset.*data.frames_per_sentence"):
        LFVILA(ModelConfig())
