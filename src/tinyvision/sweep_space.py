"""The search space of a sweep: a TOML file of distributions over config keys, validated.

    space = load_space("space.toml", check)   # every problem reported at once, in a ConfigError
    values = space.suggest(trial)             # one Optuna trial's values, by dotted key
    overrides_for(values)                     # as ``section.key=value`` overrides

The space file (TOML) maps dotted config keys to distributions under ``[params]``; an optional
``[sweep]`` table tunes the search itself::

    [sweep]                      # optional; the defaults are shown
    objective = "final"          # "final": last epoch's val_acc; "best": the best epoch's
    sampler = "tpe"              # "tpe" (Bayesian) or "random"
    prune = true                 # MedianPruner on the per-epoch val_acc
    prune_startup_trials = 5     # trials that finish before any trial is pruned
    prune_warmup_epochs = 2      # epochs every trial runs before it can be pruned

    [params]
    "optim.lr" = {type = "float", low = 1e-4, high = 1e-2, log = true}
    "optim.name" = {type = "categorical", choices = ["adam", "radam", "sgd"]}
    "model.depth" = {type = "int", low = 1, high = 4}
    "model.dim" = {type = "int", low = 64, high = 256, step = 64}
    "optim.betas" = {type = "categorical", choices = [[0.9, 0.999], [0.9, 0.99]]}

Distributions: ``float`` (``low``, ``high``, optional ``log`` or ``step``), ``int`` (``low``,
``high``, optional ``log`` or ``step``) and ``categorical`` (``choices``: any TOML values; lists
and tables are stored in the study as their TOML text). Unquoted dotted keys (``optim.lr = {...}``)
and sub-tables (``[params.optim]``) mean the same. The file is validated before anything runs:
unknown distribution types, ``low >= high``, keys that are not config keys, and values a config
would refuse (each key is checked by building a config with its bounds or every choice) are all
reported at once in one ConfigError.

``sweep.py`` runs the sweep; this module only reads and checks the space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from tinyvision.config import load_config, toml_value, tomllib
from tinyvision.errors import ConfigError

if TYPE_CHECKING:
    import optuna

# Keys a space may not search, and why.
RESERVED_KEYS = {
    "data.val_size": "the validation split must be the same for every trial (use --val-size)",
    "train.seed": "it also seeds the validation split, which must be the same for every trial",
    "train.out_dir": "the sweep puts every trial's run folder in its own folder (use --out)",
    "train.name": "the sweep names the trials' run folders",
}


# --- the space file -------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_bounds(low: float, high: float, log: bool) -> None:
    if not low < high:
        raise ValueError(
            f"low ({low!r}) must be below high ({high!r}); to fix a value, give it as an "
            "override key=value instead"
        )
    if log and low <= 0:
        raise ValueError(f"log = true needs low > 0 (got low = {low!r})")


class FloatParam(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False  # sample log(x) uniformly: for learning rates, weight decay...
    step: float | None = Field(None, gt=0)  # a grid low, low + step, ...

    @pydantic.model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_bounds(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined: sample on a log scale or a grid")
        return self

    def suggest(self, trial: optuna.Trial, key: str) -> Any:
        return trial.suggest_float(key, self.low, self.high, log=self.log, step=self.step)

    def samples(self) -> list[Any]:
        return [self.low, self.high]


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: PositiveInt = 1

    @pydantic.model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_bounds(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("log and step cannot be combined: sample on a log scale or a grid")
        return self

    def suggest(self, trial: optuna.Trial, key: str) -> Any:
        return trial.suggest_int(key, self.low, self.high, step=self.step, log=self.log)

    def samples(self) -> list[Any]:
        # The largest grid point: Optuna never samples a high that is off the grid.
        return [self.low, self.low + (self.high - self.low) // self.step * self.step]


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    @pydantic.field_validator("choices")
    @classmethod
    def _unique(cls, choices: list[Any]) -> list[Any]:
        texts = [toml_value(choice) for choice in choices]
        repeated = sorted({text for text in texts if texts.count(text) > 1})
        if repeated:
            raise ValueError(f"choices repeat {', '.join(repeated)}")
        return choices

    @property
    def _encoded(self) -> bool:
        # Optuna stores scalar choices as they are; lists and tables go in as their TOML text.
        return any(isinstance(choice, list | dict) for choice in self.choices)

    def optuna_choices(self) -> list[Any]:
        return [toml_value(c) for c in self.choices] if self._encoded else list(self.choices)

    def decode(self, stored: Any) -> Any:
        """The config value of a choice as Optuna stores it."""
        if not self._encoded:
            return stored
        return dict(zip(self.optuna_choices(), self.choices, strict=True))[stored]

    def suggest(self, trial: optuna.Trial, key: str) -> Any:
        return self.decode(trial.suggest_categorical(key, self.optuna_choices()))

    def samples(self) -> list[Any]:
        return list(self.choices)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
PARAM_TYPES = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}


class SweepSettings(_Strict):
    """The ``[sweep]`` table: how the search runs."""

    # What a finished trial scores: the last epoch's validation accuracy (what `tinyvision
    # train best.toml` will produce) or the best epoch's (kinder to noisy, unstable configs).
    objective: Literal["final", "best"] = "final"
    sampler: Literal["tpe", "random"] = "tpe"
    prune: bool = True
    prune_startup_trials: NonNegativeInt = 5  # the median needs a few finished trials first
    prune_warmup_epochs: NonNegativeInt = 2  # early epochs are too noisy to judge a trial by


class SearchSpace(_Strict):
    sweep: SweepSettings = SweepSettings()
    params: dict[str, Param] = Field(min_length=1)

    @pydantic.field_validator("params")
    @classmethod
    def _keys(cls, params: dict[str, Any]) -> dict[str, Any]:
        problems = [problem for key in params if (problem := key_problem(key))]
        if problems:
            raise ValueError("; ".join(problems))
        return params

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """One value per key, drawn by ``trial``: the trial's config overrides."""
        return {key: param.suggest(trial, key) for key, param in self.params.items()}

    def decode(self, stored: dict[str, Any]) -> dict[str, Any]:
        """Config values from the params of a finished trial, as Optuna stored them."""
        return {
            key: param.decode(stored[key]) if isinstance(param, CategoricalParam) else stored[key]
            for key, param in self.params.items()
        }


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be searched, if it cannot (before asking the config about it)."""
    if len(key.split(".")) < 2 or not all(key.split(".")):
        return f"{key!r} is not a dotted config key such as 'optim.lr'"
    if key in RESERVED_KEYS:
        return f"{key} cannot be searched: {RESERVED_KEYS[key]}"
    return None


ParamCheck = Callable[[str, FloatParam | IntParam | CategoricalParam], list[str]]
_PARAM = pydantic.TypeAdapter(Param)


def load_space(path: str | Path, check: ParamCheck | None = None) -> SearchSpace:
    """Read and validate a space file; every problem is reported at once in one ConfigError.

    Each distribution is validated on its own, so one bad entry hides no other; ``check(key,
    param)`` then lists what the config says about each valid one (see ``Sweep.check_param``).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"space file {str(path)!r} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from None

    problems: list[str] = []
    for key in raw:
        if key not in SearchSpace.model_fields:
            hint = "distributions go under [params], e.g. [params] optim.lr = {type = ...}"
            close = get_close_matches(key, list(SearchSpace.model_fields), n=1, cutoff=0.6)
            hint = f"did you mean [{close[0]}]?" if close else hint
            problems.append(f"  {key}: unknown table; {hint}")
    settings = SweepSettings()
    try:
        settings = SweepSettings.model_validate(raw.get("sweep", {}))
    except pydantic.ValidationError as err:
        problems += [_settings_problem(problem) for problem in err.errors()]
    raw_params = raw.get("params")
    params: dict[str, Any] = {}
    if not isinstance(raw_params, dict) or not raw_params:
        problems.append("  [params]: missing or empty: the table of config keys to search")
        raw_params = {}
    for key, value in _flatten_params(raw_params).items():
        if reason := key_problem(key):
            problems.append(f"  {key}: {reason.removeprefix(f'{key} ')}")
            continue
        try:
            params[key] = _PARAM.validate_python(value)
        except pydantic.ValidationError as err:
            problems += [_param_problem(key, problem) for problem in err.errors()]
            continue
        if check is not None:
            problems += [line for line in check(key, params[key]) if line not in problems]
    if problems:
        raise ConfigError(f"invalid search space {path}:\n" + "\n".join(problems))
    return SearchSpace(sweep=settings, params=params)


def _flatten_params(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``optim.lr = {...}`` and ``[params.optim] lr = {...}`` both mean the key ``optim.lr``."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        is_section = (
            isinstance(value, dict)
            and "type" not in value
            and value
            and all(isinstance(v, dict) for v in value.values())
        )
        if is_section:
            flat.update(_flatten_params(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _param_problem(key: str, problem: Any) -> str:
    loc = [str(part) for part in problem["loc"]]
    kind = problem["type"]
    fields: list[str] = []
    if loc and loc[0] in PARAM_TYPES:  # the union tag pydantic puts in the location
        fields = list(PARAM_TYPES[loc[0]].model_fields)
        loc = loc[1:]
    if kind == "union_tag_invalid":
        tag = problem.get("ctx", {}).get("tag")
        return f"  {key}: unknown distribution type {tag!r}: use {_type_names()}"
    if kind == "union_tag_not_found":
        return f"  {key}: no distribution type: add type = {_type_names()}"
    if kind == "model_attributes_type":
        return (
            f"  {key}: must be a distribution table such as "
            f'{{type = "float", low = 1e-4, high = 1e-2}} (got {problem["input"]!r})'
        )
    if kind == "extra_forbidden":
        return f"  {key}: unknown setting {loc[-1]!r}; this type takes {', '.join(fields)}"
    message = problem["msg"].removeprefix("Value error, ")
    got = problem.get("input")
    shown = "" if isinstance(got, dict) or not loc else f" (got {got!r})"
    return f"  {'.'.join([key, *loc])}: {message}{shown}"


def _settings_problem(problem: Any) -> str:
    key = ".".join(["sweep", *(str(part) for part in problem["loc"])])
    if problem["type"] == "extra_forbidden":
        known = [f"sweep.{k}" for k in SweepSettings.model_fields]
        close = get_close_matches(key, known, n=1, cutoff=0.6)
        return f"  {key}: unknown key." + (f" Did you mean {close[0]!r}?" if close else "")
    got = problem.get("input")
    return f"  {key}: {problem['msg']}" + ("" if isinstance(got, dict) else f" (got {got!r})")


def _type_names() -> str:
    return ", ".join(f'"{name}"' for name in PARAM_TYPES)


def overrides_for(values: dict[str, Any]) -> list[str]:
    return [f"{key}={toml_value(value)}" for key, value in values.items()]


def param_problems(
    config_path: str | Path | None,
    overrides: Sequence[str],
    key: str,
    param: FloatParam | IntParam | CategoricalParam,
) -> list[str]:
    """What the config says about searching ``key``: a config is built with each bound (or
    each choice), so a key it does not know, or a value it refuses, shows up before any run."""
    problems: list[str] = []
    for value in param.samples():
        try:
            load_config(config_path, [*overrides, f"{key}={toml_value(value)}"])
        except ConfigError as err:
            lines = str(err).splitlines()
            for line in lines[1:] if len(lines) > 1 else [f"  {key}: {err}"]:
                if line.strip().partition(":")[0] != key:  # a knock-on effect on another key
                    line += f" (when {key} = {toml_value(value)})"
                if line not in problems:
                    problems.append(line)
    return problems
