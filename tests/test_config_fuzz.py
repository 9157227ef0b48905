"""Property-based tests (Hypothesis): a random config either trains or raises the project's error.

Configs are built from the real schema (the sections' pydantic fields and every model family's
``Config``): a few keys of a small, valid base are changed to plausible values, implausible
ones (0, -1, NaN, infinity, unknown choices), wrong types, unknown keys or non-table sections.
Each config must then either train one epoch of a tiny data set, or raise a
``TinyVisionError`` (a ``ConfigError`` for anything the config itself gets wrong) — never
another exception. Errors other than a numerical blow-up must come before a run folder exists.
"""

from __future__ import annotations

import math
import types
import typing
from collections import Counter
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import pytest
from conftest import learnable_images, write_idx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import tinyvision.loop
from tinyvision.config import (
    AugmentConfig,
    DataConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    load_config,
    validate_config,
)
from tinyvision.data import sources
from tinyvision.engine import train
from tinyvision.errors import ConfigError, TinyVisionError, TrainingError
from tinyvision.models import get_variant, list_variants

SECTIONS: dict[str, type[BaseModel]] = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "train": TrainConfig,
}
# Keys the harness owns: where the data and the runs are, one epoch, one thread, no download,
# and no torch.compile (on a CPU it needs a C++ toolchain and minutes, not a config property).
FIXED = {
    "data": {"download": False, "verify": False},
    "train": {"epochs": 1, "progress": "off", "threads": 1, "compile": "off"},
}
NOT_FUZZED = {
    ("data", "data_dir"),
    ("train", "out_dir"),
    ("train", "threads"),
    ("train", "compile"),
    ("train", "progress"),
    ("data", "download"),
}
# A small model of each family, so that every example trains in a fraction of a second.
TINY_BASE: dict[str, dict[str, Any]] = {
    "mixer": {
        "patch_size": 7,
        "dim": 16,
        "depth": 1,
        "token_hidden": 8,
        "channel_hidden": 16,
        "block_dims": [],
    },
    "resmlp": {"width": 16, "depth": 1, "hidden": 16, "block_widths": []},
    "densenet": {
        "growth_rate": 4,
        "stem_channels": 4,
        "block_layers": [2, 2],
        "transition_channels": 4,
    },
    "dynconv": {"stem_width": 4, "widths": [4, 8], "depths": 1, "strides": []},
}
VARIANTS = [v.name for v in list_variants()]
BOGUS_NAMES = ["mixr", "", 3, None, ["mixer"], {"name": "mixer"}]
WRONG_TYPES = ["many", None, [1], {"a": 1}, 2.5, True, "3"]
SANE_INTS = [1, 2, 4, 8]
SMALL_INTS = [*SANE_INTS, 0, 3, 7, -1, 100]
SANE_FLOATS = [0.0, 0.1, 0.5, 1e-3]
FLOATS = [*SANE_FLOATS, 0.9, 1.0, -0.5, 3.0, math.nan, math.inf, -math.inf]


def family_of(variant: str) -> str:
    return get_variant(variant).family.__module__.rsplit(".", 1)[-1]


# ------------------------------------------------------------------- values from the schema


def values_for(annotation: Any, sane: bool) -> st.SearchStrategy:
    """Values of a field's type, small so models stay tiny. ``sane``: only values a careful
    user might write (which can still clash, e.g. a patch size of 8 on 28x28 images);
    otherwise also zeros, negatives, NaN, infinities, unknown choices and empty lists."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return values_for(args[0], sane)
    if origin is Literal:
        return st.sampled_from(list(args) if sane else [*args, "bogus"])
    if origin in (Union, types.UnionType):
        return st.one_of([values_for(a, sane) for a in args if a is not type(None)])
    if origin is list:
        return st.lists(values_for(args[0], sane), min_size=int(sane), max_size=3)
    if origin is tuple:
        return st.tuples(*[values_for(a, sane) for a in args])
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.sampled_from(SANE_INTS if sane else SMALL_INTS)
    if annotation is float:
        return st.sampled_from(SANE_FLOATS if sane else FLOATS)
    if annotation is str:
        if sane:
            return st.sampled_from(["cpu", "auto"])
        return st.one_of(st.sampled_from(["", "a/b", "/tmp", "..", "cuda:9"]), st.text(max_size=8))
    return st.just("unsupported")  # a field type this test does not know: still a value


def field_values(schema: type[BaseModel], name: str, sane: bool) -> st.SearchStrategy:
    values = values_for(schema.model_fields[name].annotation, sane)
    if sane:
        return values
    # One value in three is of a wrong type altogether.
    return one_in(3).flatmap(lambda wrong: st.sampled_from(WRONG_TYPES) if wrong else values)


def one_in(n: int) -> st.SearchStrategy[bool]:
    return st.sampled_from(range(n)).map(lambda r: r == n // 2)


def misspell(key: str) -> str:
    return key[:-1] if len(key) > 2 else key + "x"


@st.composite
def raw_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A raw config dict (what a TOML file and overrides give) built around a valid base."""
    # Half the examples hold only values a careful user might write, so that many train.
    sane = draw(st.booleans())
    bogus_name = not sane and draw(one_in(5))
    name = draw(st.sampled_from(BOGUS_NAMES)) if bogus_name else draw(st.sampled_from(VARIANTS))
    family = family_of(name) if isinstance(name, str) and name in VARIANTS else "mixer"
    # The default batch (256) is larger than the 96 training images: 16 gives 6 steps.
    raw: dict[str, Any] = {
        "data": {"batch_size": 16},
        "model": {"name": name, **TINY_BASE[family]},
    }

    keys = [
        (s, k)
        for s, schema in SECTIONS.items()
        for k in schema.model_fields
        if (s, k) not in NOT_FUZZED
    ]
    model_schema = (
        get_variant(name).family.Config if family in TINY_BASE and name in VARIANTS else None
    )
    if model_schema is not None:
        keys += [("model", k) for k in model_schema.model_fields]
    for section, key in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)):
        schema = model_schema if section == "model" else SECTIONS[section]
        raw.setdefault(section, {})[key] = draw(field_values(schema, key, sane))

    mutation = 9 if sane else draw(st.sampled_from(range(6)))
    if mutation == 0:  # an unknown key: a misspelt real one
        section, key = draw(st.sampled_from(keys))
        raw.setdefault(section, {})[misspell(key)] = 1
    elif mutation == 1:  # an unknown section
        raw[misspell(draw(st.sampled_from(list(SECTIONS))))] = {"epochs": 1}
    elif mutation == 2:  # a section that is not a table
        raw[draw(st.sampled_from([*SECTIONS, "model"]))] = draw(st.sampled_from([3, "x", [1]]))
    return raw


def with_harness(raw: dict[str, Any], data_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The fixed keys on top (where a section was replaced by a non-table, it stays broken)."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for section, values in FIXED.items():
        if isinstance(raw.setdefault(section, {}), dict):
            raw[section].update(values)
    if isinstance(raw["data"], dict):
        raw["data"]["data_dir"] = str(data_dir)
    if isinstance(raw["train"], dict):
        raw["train"]["out_dir"] = str(out_dir)
        if "compile" not in TrainConfig.model_fields:
            del raw["train"]["compile"]
    return raw


# ------------------------------------------------------------------------------- harness


@pytest.fixture(scope="module")
def fuzz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 training and 32 test images: an epoch is a few steps at the usual batch sizes."""
    folder = tmp_path_factory.mktemp("fuzz-data")
    rng = np.random.default_rng(0)
    for split, count in (("train", 96), ("t10k", 32)):
        labels = np.arange(count) % 10
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", learnable_images(labels, rng))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    """Nothing outside the test's folders is read, and the per-epoch figures are skipped:
    they depend on the metrics, not on the config, and cost most of an example's time."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TINYVISION_DATA", raising=False)
        patch.setenv("TINYVISION_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setattr(sources, "SYSTEM_FOLDERS", {"fashion-mnist": [], "cifar10": []})
        patch.setattr(tinyvision.loop, "plot_curves", lambda run: None)
        yield tmp_path_factory.mktemp("fuzz-runs")


def outcome_of(raw: dict[str, Any], out_dir: Path) -> str:
    """ "trained", or the project's error it raised; any other exception fails the test."""
    try:
        config = validate_config(raw)
    except ConfigError as err:
        return "ConfigError: " + problem(err)
    try:
        result = train(config)
    except TrainingError as err:  # a numerical blow-up shows only while training
        return "TrainingError: " + problem(err)
    except TinyVisionError as err:
        assert not out_dir.exists(), f"{type(err).__name__} after a run folder was created"
        return f"{type(err).__name__}: " + problem(err)
    assert result.summary["epochs"] == 1
    return "trained"


def problem(err: BaseException) -> str:
    """The message's first problem line, without the paths and values that vary."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = lines[1] if lines[0] == "invalid configuration:" and len(lines) > 1 else lines[0]
    return line.split(" (got ")[0][:110]


def test_random_configs_train_or_raise_the_projects_error(fuzz_data, harness, reliability):
    outcomes: list[str] = []

    @settings(
        max_examples=35,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(raw=raw_configs())
    def check(raw: dict[str, Any]) -> None:
        out_dir = harness / f"example-{len(outcomes)}"
        outcomes.append(outcome_of(with_harness(raw, fuzz_data, out_dir), out_dir))

    check()
    kinds = Counter(o.split(":")[0] for o in outcomes)
    assert kinds["trained"] >= 5, kinds  # the generator must not only produce broken configs
    assert kinds["ConfigError"] >= 5, kinds
    messages = Counter(o for o in outcomes if o != "trained")
    reliability.record(
        "config (property-based)",
        f"{len(outcomes)} random configs over every section and model family (Hypothesis, "
        "derandomized)",
        ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()) + "; no other exception",
        messages=dict(messages.most_common()),
    )


# --- overrides as typed on the command line ------------------------------------------------

DOTTED = [f"{s}.{k}" for s, schema in SECTIONS.items() for k in schema.model_fields] + [
    "model.name",
    "model.depth",
    "model.patch_size",
    "model.widths",
    "optim",
    "model",
    "x.y.z",
]


@st.composite
def override_strings(draw: st.DrawFn) -> str:
    key = draw(st.one_of(st.sampled_from(DOTTED), st.text(max_size=12)))
    value = draw(
        st.one_of(
            st.sampled_from(
                [
                    "1",
                    "-1",
                    "0",
                    "1e-3",
                    "nan",
                    "inf",
                    "true",
                    "[1, 2]",
                    "[]",
                    "{a=1}",
                    '"x"',
                    "mixer",
                    "densenet_brief",
                    "[",
                    "",
                    "1.5",
                    "'",
                    "{",
                    "[[1]]",
                ]
            ),
            st.text(max_size=12),
        )
    )
    separator = draw(st.sampled_from(["=", "=", "=", "", "==", " = "]))
    return f"{key}{separator}{value}"


def test_random_override_strings_give_a_config_or_a_config_error(reliability):
    outcomes: Counter[str] = Counter()

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(overrides=st.lists(override_strings(), min_size=1, max_size=3))
    def check(overrides: list[str]) -> None:
        try:
            load_config(None, overrides)
            outcomes["valid config"] += 1
        except ConfigError:
            outcomes["ConfigError"] += 1

    check()
    reliability.record(
        "config (property-based)",
        f"{sum(outcomes.values())} random lists of command-line overrides (section.key=value, "
        "random keys, TOML and non-TOML values, missing '=')",
        ", ".join(f"{n} {k}" for k, n in outcomes.most_common()) + "; no other exception",
    )
