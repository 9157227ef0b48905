"""Run configuration: one validated type per concern, read from TOML plus overrides.

A config file has the sections ``[data]``, ``[augment]``, ``[model]``, ``[optim]``,
``[schedule]`` and ``[train]``. Everything is validated here, once, at the edge (pydantic:
unknown keys are rejected with a "did you mean"; types and ranges are checked), so the engine
trusts what it receives. ``[model]`` holds ``name`` (a registered variant, see
``tinyvision.models``) and that family's architecture options.

Overrides use dotted keys and TOML values: ``optim.lr=3e-3``, ``model.depth=4``,
``augment.flip=true``, ``model.widths=[64, 128]``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import tomli_w
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveInt

from tinyvision.errors import ConfigError, format_validation_error

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MODEL = "mixer"
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


# Test-time augmentation modes, the one list of them (data.loader.tta_views makes the views, the
# CLI's `evaluate --tta` offers those other than "none").
TTAMode = Literal["none", "flip", "flip-shift"]


class Section(BaseModel):
    # No setting has a use for NaN or infinity (TOML can write both): reject them here rather
    # than let an lr = inf reach the optimiser.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )


class DataConfig(Section):
    dataset: Literal["fashion-mnist", "cifar10"] = "fashion-mnist"
    # Where to look first; then $TINYVISION_DATA, the user cache, system folders, a download.
    data_dir: Path | None = None
    download: bool = True
    # false = trust local files whose checksums do not match (a warning is printed).
    verify: bool = True
    # Training images held out (seeded, stratified) as a validation split for tuning; 0 = none.
    val_size: NonNegativeInt = 0
    batch_size: PositiveInt = 256
    eval_batch_size: PositiveInt = 2048


class AugmentConfig(Section):
    """Batched on the training device; applied to training batches only."""

    crop_padding: NonNegativeInt = 0  # random translation by up to this many pixels
    flip: bool = False  # random horizontal flip
    erasing: Fraction = 0.0  # probability of random erasing (cutout of random size)
    mixup_alpha: NonNegativeFloat = 0.0  # 0 = off
    cutmix_alpha: NonNegativeFloat = 0.0  # 0 = off; with mixup both, one is drawn per batch


class OptimConfig(Section):
    name: Literal["sgd", "adam", "adamw", "radam"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: NonNegativeFloat = 0.0
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # SGD only
    nesterov: bool = False  # SGD only
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)  # Adam family only
    # Norm weights and biases are usually excluded from weight decay.
    decay_norm_and_bias: bool = False
    grad_clip: NonNegativeFloat = 0.0  # max global gradient norm; 0 = off


class ScheduleConfig(Section):
    """Learning rate per step: linear warm-up, then the named shape."""

    name: Literal["constant", "step", "cosine", "onecycle"] = "cosine"
    warmup_epochs: NonNegativeFloat = 0.0
    min_lr_ratio: Fraction = 0.0  # cosine and onecycle end at lr * min_lr_ratio
    step_epochs: PositiveInt = 30  # step: multiply by gamma every step_epochs
    gamma: float = Field(0.1, gt=0.0, le=1.0)


class TrainConfig(Section):
    epochs: PositiveInt = 10
    seed: int = Field(0, ge=0, lt=2**63)  # the range torch.manual_seed accepts, from 0
    device: str = "auto"  # auto = CUDA, then Apple MPS, then CPU; or "cpu", "cuda:1", ...
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on CUDA
    # The fast path. Neither setting changes what the model computes beyond floating-point
    # rounding. compile: torch.compile the model ("auto" = on with CUDA). channels_last: NHWC
    # memory layout for models with convolutions ("auto" = on with CUDA and on a CPU).
    compile: Literal["auto", "on", "off"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)  # 0 = no EMA of weights
    eval_every: PositiveInt = 1  # evaluate every N epochs (and always after the last)
    # Test-time augmentation at each evaluation: the softmax averaged over the image and its
    # mirror ("flip"), and their one-pixel shifts ("flip-shift"). The metrics keep the plain
    # accuracy (val_acc, test_acc) and add the averaged one (val_acc_tta, test_acc_tta).
    eval_tta: TTAMode = "none"
    checkpoint_every_steps: NonNegativeInt = 0  # 0 = at the end of every epoch only
    deterministic: bool = False  # deterministic kernels (exact resume on CPU)
    threads: NonNegativeInt = 0  # CPU threads for torch; 0 = torch's default
    out_dir: Path = Path("runs")
    name: str = Field("", max_length=100)  # run folder prefix; defaults to "<dataset>-<model>"
    progress: Literal["auto", "on", "off"] = "auto"  # auto = bars only on a terminal
    # `tinyvision train` and tinyvision.train() write report.html / report.md once training
    # has returned (from the run folder; engine.train() itself never does); sweep trials skip it.
    report: bool = True
    # Also write TensorBoard event files into the run folder (needs the tensorboard extra).
    tensorboard: bool = False

    @pydantic.field_validator("name")
    @classmethod
    def _one_folder_name(cls, name: str) -> str:
        # A "/" would put the run elsewhere under out_dir, or, from "/", anywhere on the disk.
        if not re.fullmatch(r"[\w.+-]*", name) or name in (".", ".."):
            raise ValueError("must be one plain folder name: letters, digits, '_', '.', '+', '-'")
        return name


class Config(Section):
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: dict[str, Any] = Field(default_factory=lambda: {"name": DEFAULT_MODEL})
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()

    @pydantic.field_validator("model")
    @classmethod
    def _resolve_model(cls, value: dict[str, Any]) -> dict[str, Any]:
        from tinyvision.models import model_config

        params = dict(value)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise ValueError("model.name is required: the registered model variant to train")
        # Store every architecture hyperparameter, defaults included, so a run's saved
        # config reproduces it even if a variant's defaults change later.
        return {"name": name, **model_config(name, **params).model_dump(mode="json")}

    @property
    def model_name(self) -> str:
        return self.model["name"]

    @property
    def model_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}

    def to_toml(self) -> str:
        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True))


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a TOML config (or the defaults), apply ``key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {str(path)!r} is a folder, not a file")
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # a photo or other binary file given by mistake
            raise ConfigError(
                f"{path} is not a text file (it is not UTF-8): a config is a TOML text file, "
                "see configs/"
            ) from None
        except OSError as err:
            raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path} is not valid TOML: {err}") from None
    for override in overrides:
        _apply_override(raw, override)
    return validate_config(raw)


def validate_config(raw: dict[str, Any]) -> Config:
    """Validate a raw config dict; every problem is reported at once in one ConfigError."""
    from tinyvision.models import model_config

    problems = []
    model = raw.get("model", {})
    try:  # the model section first, for messages that name the family's own keys
        if not isinstance(model, dict):
            raise ConfigError("invalid configuration:\n  model: must be a table with a name")
        model = {"name": DEFAULT_MODEL, **model}
        model_config(**model)
        raw = {**raw, "model": model}
    except ConfigError as err:
        message = str(err)
        if not message.startswith("invalid configuration:\n"):
            message = f"  model.name: {message}"
        problems.append(message.removeprefix("invalid configuration:\n"))
        raw = {**raw, "model": {"name": DEFAULT_MODEL}}
    try:
        config = Config.model_validate(raw)
    except pydantic.ValidationError as err:
        problems.append(
            format_validation_error(err, Config).removeprefix("invalid configuration:\n")
        )
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))
    return config


def toml_value(value: Any) -> str:
    """``value`` as one line of TOML, the form overrides take: ``0.003``, ``"radam"``, ``[1, 2]``.

    Lists and tables are written inline by hand: tomli_w spreads arrays over several lines.
    """
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (
            f"{tomli_w.dumps({k: 0}).partition('=')[0].strip()} = {toml_value(v)}"
            for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form section.key=value")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word is a string: model.name=mixer_s
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
    node[leaf] = value
