"""The strict YAML config: defaults, dotted ``--set`` overrides parsed as YAML, type checks, unknown keys, grid axes,
file errors, and the YAML round trip stored in every surface file."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from distland.config import (Config, ConfigError, DataConfig, GridConfig, apply_overrides, check_axis,
                             config_from_yaml_text, load_config, to_yaml)
from distland.grid import Grid

from conftest import write_yaml


# --------------------------------------------------------------------------------------------- defaults
def test_defaults_are_valid_and_load_without_a_file():
    cfg = load_config()
    assert cfg == Config()  # validate() changed nothing
    assert cfg.validate() == Config()
    grid = Grid.from_config(cfg.grid)
    assert grid.ndim == 2 and grid.size == len(grid.x) * len(grid.y) > 1
    assert cfg.splits == ("train",)
    assert cfg.directions.kind == "random" and cfg.directions.norm == "filter" and cfg.directions.ignore == "biasbn"


def test_empty_yaml_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing but a comment\n")
    assert load_config(path) == Config()


# --------------------------------------------------------------------------------------------- --set
def test_set_values_are_parsed_as_yaml():
    cfg = load_config(None, [
        "grid.x=[-2, 3, 6]",
        "grid.y=null",
        "sweep.progress=false",
        "directions.same_dir=true",
        "directions.seed=7",
        "data.max_samples=200",
        "model=resnet20",
        "model_args.width=2",
        "data.options={num_samples: 64}",
        "directions.norm=layer",
    ])
    assert cfg.grid.x == [-2.0, 3.0, 6.0] and all(isinstance(v, float) for v in cfg.grid.x)
    assert cfg.grid.y is None
    assert cfg.sweep.progress is False
    assert cfg.directions.same_dir is True
    assert cfg.directions.seed == 7 and isinstance(cfg.directions.seed, int)
    assert cfg.data.max_samples == 200
    assert cfg.model == "resnet20"
    assert cfg.model_args == {"width": 2}
    assert cfg.data.options == {"num_samples": 64}
    assert cfg.directions.norm == "layer"
    assert Grid.from_config(cfg.grid).shape == (6,)


def test_set_overrides_a_file_key_by_key_and_the_last_one_wins(tmp_path):
    path = write_yaml(tmp_path / "job.yaml", {
        "model": "mlp",
        "data": {"name": "digits", "max_samples": 100, "split": "both"},
        "grid": {"x": [-1, 1, 5], "y": [-2, 2, 7]},
    })
    cfg = load_config(path, ["data.max_samples=50", "grid.y=[0, 1, 2]", "grid.y=[0, 4, 3]"])
    assert cfg.model == "mlp"
    assert cfg.data.name == "digits" and cfg.data.split == "both"  # untouched keys of the same section stay
    assert cfg.data.max_samples == 50
    assert cfg.grid.x == [-1.0, 1.0, 5.0]
    assert cfg.grid.y == [0.0, 4.0, 3.0]
    assert cfg.splits == ("train", "test")


@pytest.mark.parametrize("item", ["grid.x", "gridx[-1,1,3]", "=5", " =5"])
def test_set_without_key_and_equals_is_refused(item):
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, [item])


def test_set_into_a_scalar_is_refused(tmp_path):
    path = write_yaml(tmp_path / "job.yaml", {"model": "democnn"})
    with pytest.raises(ConfigError, match="'model' is not a section"):
        load_config(path, ["model.width=3"])


def test_set_with_invalid_yaml_value_is_refused():
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(None, ["grid.x=[-1, 1"])


def test_apply_overrides_creates_missing_sections():
    data = apply_overrides({}, ["engine.device=cpu", "grid.y=null"])
    assert data == {"engine": {"device": "cpu"}, "grid": {"y": None}}


# --------------------------------------------------------------------------------------------- types
@pytest.mark.parametrize("overrides, message", [
    (["grid.x=abc"], r"grid\.x must be a list"),
    (['grid.x="abc"'], r"grid\.x must be a list"),
    (["grid.x=[a, 1, 3]"], r"grid\.x must be a number"),
    (["grid.x=[-1, 1, 2.5]"], r"grid\.x: num must be an integer"),
    (["data.max_samples=1.5"], r"data\.max_samples must be an integer"),
    (["data.max_samples=true"], r"data\.max_samples must be an integer"),
    (["directions.seed=abc"], r"directions\.seed must be an integer"),
    (["sweep.progress=maybe"], r"sweep\.progress must be true or false"),
    (["data=5"], r"data must be a mapping"),
    (["model_args=[1, 2]"], r"model_args must be a mapping"),
    (["model=[1, 2]"], r"model must be a string"),
    (["directions.norm=filters"], r"directions\.norm: 'filters' is not valid; choose one of filter, layer"),
    (["engine.fold_bn=maybe"], r"engine\.fold_bn"),
    (["engine.device=gpu"], r"engine\.device"),  # a typo must not silently mean the CPU
    (["engine.device=cuda:x"], r"engine\.device"),
    (["sweep.chunk=-1"], r"sweep\.chunk must be >= 0"),
    (["data.max_samples=-3"], r"data\.max_samples"),
    (["output="], r"output must name"),
])
def test_type_and_choice_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_type_error_from_a_yaml_file(tmp_path):
    path = write_yaml(tmp_path / "job.yaml", {"grid": {"x": "abc"}})
    with pytest.raises(ConfigError, match=r"grid\.x must be a list, got 'abc'"):
        load_config(path)


def test_unknown_top_level_key_lists_the_valid_ones(tmp_path):
    path = write_yaml(tmp_path / "job.yaml", {"model": "democnn", "modle": "x"})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "unknown config key modle" in msg
    for key in (f.name for f in dataclasses.fields(Config)):
        assert key in msg


def test_unknown_nested_key_names_the_section_and_its_keys():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["grid.w=[0, 1, 2]"])   # (grid.z is the third axis of a 3-D landscape)
    msg = str(info.value)
    assert "grid.w" in msg
    assert "valid keys in grid: x, y, z, more" in msg
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.maxsamples=3"])
    msg = str(info.value)
    assert "data.maxsamples" in msg
    for key in (f.name for f in dataclasses.fields(DataConfig)):
        assert key in msg


# --------------------------------------------------------------------------------------------- grid axes
@pytest.mark.parametrize("axis, message", [
    ([-1, 1, 0], "num must be an integer >= 1"),
    ([-1, 1, -4], "num must be an integer >= 1"),
    ([1, -1, 3], "min 1.0 is greater than max -1.0"),
    ([0, 0, 3], "need min < max"),
    ("abc", r"must be \[min, max, num\]"),
    (5, r"must be \[min, max, num\]"),
    ([-1, 1], r"must be \[min, max, num\]"),
    ([-1, 1, 3, 4], r"must be \[min, max, num\]"),
    ([float("-inf"), 1, 3], "must be finite"),
    ([float("nan"), 1, 3], "must be finite"),
    (["a", 1, 3], "min and max must be numbers"),
    ([-1, 1, "3"], "num must be an integer"),
])
def test_check_axis_rejects_bad_axes(axis, message):
    with pytest.raises(ConfigError, match=message) as info:
        check_axis("grid.y", axis)
    assert str(info.value).startswith("grid.y")


def test_check_axis_accepts_integral_floats_and_single_points():
    assert check_axis("grid.x", [-1.0, 2.0, 7.0]) == (-1.0, 2.0, 7)
    assert isinstance(check_axis("grid.x", [-1, 2, 7.0])[2], int)
    assert check_axis("grid.x", [0, 0, 1]) == (0.0, 0.0, 1)


@pytest.mark.parametrize("overrides, message", [
    (["grid.x=[-1, 1, 0]"], r"grid\.x: num must be an integer >= 1"),
    (["grid.y=[2, 1, 3]"], r"grid\.y: min 2.0 is greater than max 1.0"),
    (["grid.x=7"], r"grid\.x must be a list"),
])
def test_bad_grid_through_load_config(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


# --------------------------------------------------------------------------------------------- directions rules
def test_direction_kind_rules():
    with pytest.raises(ConfigError, match="needs directions.target"):
        load_config(None, ["directions.kind=interp", "grid.y=null"])
    # interp with grid.y: x is the interpolation, y a random direction (the authors' mixed plots; issue 11)
    mixed = load_config(None, ["directions.kind=interp", "directions.target=b.pt", "grid.y=[-1,1,3]"])
    assert mixed.grid.y == [-1, 1, 3] and mixed.directions.resolved_type() == "states"
    cfg = load_config(None, ["directions.kind=interp", "directions.target=b.pt"])
    assert cfg.grid.x == [-0.5, 1.5, 401] and cfg.grid.y is None  # the interpolation default grid
    with pytest.raises(ConfigError, match="needs directions.file"):
        load_config(None, ["directions.kind=file"])
    cfg = load_config(None, ["directions.file=dirs.h5"])
    assert cfg.directions.kind == "file"  # a file given means: use it


def test_omitted_grid_y_means_1d():
    assert load_config(None, ["grid.x=[-1,1,5]"]).grid.y is None
    assert load_config(None, []).grid.y == [-1.0, 1.0, 21]  # no grid at all: the 2-D default
    assert load_config(None, ["grid={x: [0, 1, 3], y: [0, 1, 4]}"]).grid.y == [0, 1, 4]


# --------------------------------------------------------------------------------------------- files
def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: democnn\ngrid: {x: [-1, 1, 3]\n")
    with pytest.raises(ConfigError, match="is not valid YAML") as info:
        load_config(path)
    assert "broken.yaml" in str(info.value)


def test_yaml_list_is_refused(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model: democnn\n- grid: {}\n")
    with pytest.raises(ConfigError, match="must hold a mapping of keys, got list"):
        load_config(path)


# --------------------------------------------------------------------------------------------- round trip
def test_to_yaml_round_trip():
    cfg = load_config(None, [
        "model=resnet20", "model_args={width: 2}", "checkpoint=ck.pt", "data.name=synthetic",
        "data.options={num_samples: 32}", "data.split=both", "directions.norm=dlayer", "directions.ignore=none",
        "directions.type=states", "directions.seed=11", "directions.same_dir=true", "grid.x=[-0.5, 2, 9]",
        "grid.y=[-3, 1, 4]", "output=out/s.h5", "engine.fold_bn=off", "engine.channels_last=on",
        "sweep.chunk=5", "sweep.io=root",
    ])
    text = to_yaml(cfg)
    assert isinstance(yaml.safe_load(text), dict)
    back = config_from_yaml_text(text)
    assert back == cfg
    assert to_yaml(back) == text


def test_to_yaml_round_trip_of_1d_and_defaults():
    for cfg in (Config(), load_config(None, ["grid.y=null", "directions.file=d.h5"])):
        assert config_from_yaml_text(to_yaml(cfg)) == cfg
    assert config_from_yaml_text(to_yaml(load_config(None, ["grid.y=null"]))).grid.y is None


def test_grid_config_default_lists_are_independent():
    a, b = GridConfig(), GridConfig()
    a.x[0] = 99.0
    assert b.x[0] != 99.0
