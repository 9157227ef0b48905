from pathlib import Path

import pytest

from tinyvision.config import load_config, validate_config
from tinyvision.errors import ConfigError

CONFIGS = sorted(
    p
    for p in Path(__file__).parent.parent.joinpath("configs").glob("*.toml")
    if not p.name.startswith("sweep-")  # search spaces, checked in test_sweep.py
)


def test_defaults_are_valid_and_round_trip_through_toml(tmp_path):
    config = load_config()
    path = tmp_path / "c.toml"
    path.write_text(config.to_toml())
    assert load_config(path) == config


def test_saved_model_section_lists_every_architecture_default():
    config = load_config(None, ["model.name=mixer_brief"])
    assert config.model["name"] == "mixer_brief"
    assert config.model["skip"] is False and config.model["norm"] == "none"
    assert {"patch_size", "dim", "depth", "token_hidden", "channel_hidden"} <= set(config.model)


@pytest.mark.parametrize(
    ("override", "value"),
    [
        ("optim.lr=3e-3", 3e-3),
        ("model.depth=3", 3),
        ("augment.flip=true", True),
        ("model.token_hidden=[8, 16]", [8, 16]),
        ("model.name=mixer_l", "mixer_l"),
    ],
)
def test_overrides_are_parsed_as_toml_values(override, value):
    section, key = override.split("=")[0].split(".")
    config = load_config(
        None, [override, "model.depth=2"] if "token_hidden" in override else [override]
    )
    got = config.model[key] if section == "model" else getattr(getattr(config, section), key)
    assert got == value


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optim.lrr=1"], "optim.lrr: unknown key. Did you mean 'optim.lr'?"),
        (["model.dpeth=3"], "model.dpeth: unknown key. Did you mean 'model.depth'?"),
        (["trian.epochs=3"], "trian: unknown key. Did you mean 'train'?"),
        (["optim.lr=-1"], "optim.lr: Input should be greater than 0"),
        (["train.epochs=0"], "train.epochs: Input should be greater than 0"),
        (['train.epochs="many"'], "train.epochs: Input should be a valid integer"),
        (["model.dim=0"], "model.dim: Input should be greater than 0"),
        (["model.name=mixr"], "unknown model 'mixr'. Did you mean 'mixer'"),
        (["data.dataset=mnist"], "data.dataset: Input should be 'fashion-mnist' or 'cifar10'"),
        (["model.depth=2", "model.token_hidden=[8]"], "token_hidden has 1 entries but depth is 2"),
        (["optim.name=lion"], "optim.name: Input should be"),
    ],
)
def test_bad_values_give_one_clear_message(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert expected in str(err.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["optim.lr=-1", "model.dpeth=2", "train.epochs=0"])
    message = str(err.value)
    assert "optim.lr" in message and "model.dpeth" in message and "train.epochs" in message


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\nlr = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_model_must_be_a_table():
    with pytest.raises(ConfigError, match="model: must be a table"):
        validate_config({"model": 3})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    config = load_config(path)
    assert config.model_name


@pytest.mark.parametrize(
    ("model", "key"), [("mixer", "token_hidden"), ("mixer", "channel_hidden"), ("resmlp", "hidden")]
)
def test_an_empty_list_of_widths_is_a_config_error_that_names_it(model, key):
    # It used to pass validation and fail later in the model's zip() over the blocks.
    with pytest.raises(ConfigError, match=f"{key} is an empty list: give one width per block"):
        load_config(None, [f"model.name={model}", f"model.{key}=[]"])


def test_an_empty_list_stays_valid_where_it_is_the_default():
    config = load_config(None, ["model.name=mixer", "model.block_dims=[]"])  # d in every block
    assert config.model["block_dims"] == []
