"""Model registry: every model is reached by a registered variant name.

A *family* is an ``nn.Module`` class with a nested pydantic ``Config`` (its architecture
hyperparameters, validated once) and the constructor
``Family(config, *, in_chans, num_classes, image_size)``; data-dependent sizes are kept out of
the config so one variant trains on Fashion-MNIST and CIFAR-10 alike.

A *variant* is a name plus default config values (timm style: variants are data, not code).
The CLI, the TOML configs and the Python API all go through :func:`create_model`.

A family that implements one of the specified systems (docs/spec.md) says so with a class
attribute ``brief = Brief(...)``: the brief's letter, title, formula in one line and, where the
brief asks questions about the network (DenseNet's shapes), a function that answers them for a
built model. The report and the summary read ``get_variant(name).brief`` and nothing else, so
no module outside a family's own file knows which family is which.

A user's own model is a family registered the same way (``tinyvision.register_model``) in a
module that is imported first: by ``tinyvision --import MODULE`` or ``$TINYVISION_PLUGINS``
(see :func:`import_plugins`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
from torch import nn

from tinyvision.errors import ConfigError, format_validation_error


@dataclass(frozen=True)
class Brief:
    """The specified system a family implements, as the report and the summary name it."""

    letter: str
    title: str
    summary: str  # the specified network in one line
    # The brief's own questions about a network, answered for ``model`` built for images of
    # shape (C, H, W); None for a brief that asks none.
    answers: Callable[[nn.Module, tuple[int, int, int]], str] | None = None


@dataclass(frozen=True)
class Variant:
    name: str
    family: type[nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def brief(self) -> Brief | None:
        """The brief the family declares (``Family.brief``), if it implements one."""
        return getattr(self.family, "brief", None)


_VARIANTS: dict[str, Variant] = {}


def register_variant(
    name: str, family: type[nn.Module], description: str = "", **defaults: Any
) -> None:
    """Register ``name`` as ``family`` built with ``defaults`` (validated now, at import)."""
    if name in _VARIANTS:
        raise ValueError(f"model variant {name!r} is registered twice")
    family.Config(**defaults)  # a variant with invalid defaults is a bug: fail at import
    _VARIANTS[name] = Variant(name, family, dict(defaults), description)


def list_variants() -> list[Variant]:
    _import_families()
    return sorted(_VARIANTS.values(), key=lambda v: v.name)


def get_variant(name: str) -> Variant:
    _import_families()
    # A name from a config may be any TOML value: a list is unhashable, a number not a name.
    if not isinstance(name, str) or name not in _VARIANTS:
        from difflib import get_close_matches

        close = get_close_matches(name, _VARIANTS, n=3) if isinstance(name, str) else []
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(_VARIANTS))}."
        )
    return _VARIANTS[name]


def model_config(name: str, **overrides: Any) -> pydantic.BaseModel:
    """The validated architecture config of variant ``name`` with ``overrides`` applied."""
    variant = get_variant(name)
    try:
        return variant.family.Config(**{**variant.defaults, **overrides})
    except pydantic.ValidationError as err:
        raise ConfigError(
            format_validation_error(err, variant.family.Config, prefix="model.")
        ) from None


def create_model(
    name: str, *, in_chans: int, num_classes: int, image_size: tuple[int, int], **overrides: Any
) -> nn.Module:
    """Build variant ``name`` for images of ``in_chans`` x ``image_size``."""
    config = model_config(name, **overrides)
    family = get_variant(name).family
    try:
        return family(config, in_chans=in_chans, num_classes=num_classes, image_size=image_size)
    except ValueError as err:  # families raise ValueError for shape mismatches with the data
        raise ConfigError(f"model {name!r} does not fit the data: {err}") from None


def _import_families() -> None:
    # Importing a family module registers its variants.
    import importlib

    for module in ("mixer", "dynconv", "resmlp", "densenet"):
        try:
            importlib.import_module(f"tinyvision.models.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"tinyvision.models.{module}":
                raise
    if not _PLUGINS_FROM_ENV:
        _PLUGINS_FROM_ENV.append(os.environ.get(PLUGINS_ENV, ""))  # once, before importing
        import_plugins(part for part in _PLUGINS_FROM_ENV[0].split(",") if part.strip())


# Users' own models: modules that call ``tinyvision.register_model`` when imported, named in
# this variable (or with ``tinyvision --import``) so that every process finds them by name: the
# CLI, sweep workers, ``tinyvision report`` of a run trained from a notebook.
PLUGINS_ENV = "TINYVISION_PLUGINS"
_PLUGINS_FROM_ENV: list[str] = []


def import_plugins(specs: Iterable[str]) -> None:
    """Import each module name (``my_models``, ``pkg.models``) or ``.py`` file in ``specs``."""
    import importlib
    import importlib.util
    import sys

    for spec in (s.strip() for s in specs):
        try:
            if spec.endswith(".py") or os.sep in spec:
                path = Path(spec).resolve()
                name = f"tinyvision_plugin_{path.stem}"
                if name in sys.modules:  # imported already: registering twice is an error
                    continue
                loader_spec = importlib.util.spec_from_file_location(name, path)
                if loader_spec is None or not path.is_file():
                    raise FileNotFoundError(f"no such file: {path}")
                module = importlib.util.module_from_spec(loader_spec)
                sys.modules[name] = module
                try:
                    loader_spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
            else:
                if "" not in sys.path and os.getcwd() not in sys.path:
                    sys.path.append(os.getcwd())  # `tinyvision` the script: find ./my_models.py
                importlib.import_module(spec)
        except (ImportError, OSError) as err:
            raise ConfigError(
                f"could not import the model plugin {spec!r} ({type(err).__name__}: {err}); "
                f"give a module name on the Python path or a .py file (--import or ${PLUGINS_ENV})"
            ) from None
