"""Model summary: per-layer output shapes, parameters and multiply-accumulates, measured.

:func:`summarize` runs one forward pass on a zero batch of one image (model in eval mode, each
module's mode restored afterwards) with a forward hook on every module, and records for each
module its path, type, output shape, own parameters and own multiply-accumulates (MACs).
Shapes come from the real pass, so they are right for any configuration; MACs use the closed
forms below, evaluated on the shapes the pass saw.

MACs counted (one multiply-accumulate = one multiply and one add; biases are free):

    Linear                     out.numel() * in_features
    Conv1d/2d/3d               out.numel() * in_channels / groups * prod(kernel_size)
    ConvTranspose1d/2d/3d      in.numel()  * out_channels / groups * prod(kernel_size)
    BatchNorm, LayerNorm, ...  out.numel()  (the scale-and-shift left at inference; negligible)
    MultiheadAttention         the four projections plus the two attention matmuls
    a module with macs()       ``module.macs(input, output)``, its own count (see below)

Activations, pooling, element-wise sums and concatenations count 0. A module that defines
``macs(input, output) -> int`` reports its own work with it (``input`` is forward's single
positional argument, or the tuple of them when there are several); its children that run are
counted by their own hooks, so ``macs`` must leave them out.

:func:`summary_text` is what ``tinyvision summary MODEL-OR-CONFIG`` prints: the table and, for a
family whose brief asks questions about its network (``Brief.answers``, declared by the family;
DenseNet's shapes), the answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

_NORMS = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)


@dataclass
class LayerRow:
    """One module of the model, as the forward pass saw it."""

    name: str  # dotted module path; "" is the model itself
    type: str
    depth: int  # 0 = the model, 1 = its direct children, ...
    output_shape: tuple[int, ...] | None  # without the batch dimension; None = did not run
    params: int  # parameters held directly by this module (not by its children)
    macs: int  # this module's own MACs (its children's are on their own rows)
    has_children: bool = False
    calls: int = 0


@dataclass
class ModelSummary:
    model_type: str
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, ...] | None
    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    total_macs: int
    depth: int = 3  # rows deeper than this are folded into their ancestor at this depth
    title: str = ""
    notes: list[str] = field(default_factory=list)

    def visible_rows(self) -> list[tuple[LayerRow, int, int]]:
        """Rows down to ``depth``, each with params and MACs including its folded subtree.

        The params and MACs columns of the visible rows always add up to the totals.
        """
        out = []
        for row in self.rows:
            if row.depth > self.depth:
                continue
            params, macs = row.params, row.macs
            if row.depth == self.depth and row.has_children:  # fold the hidden subtree in
                prefix = f"{row.name}." if row.name else ""
                for other in self.rows:
                    if other.name.startswith(prefix) and other is not row:
                        params += other.params
                        macs += other.macs
            out.append((row, params, macs))
        return out

    def to_text(self) -> str:
        """An aligned table, one row per module down to ``depth``, then the totals."""
        header = ("Layer", "Type", "Output shape", "Params", "MACs")
        lines = []
        for row, params, macs in self.visible_rows():
            name = row.name.rsplit(".", 1)[-1] if row.name else "(model)"
            lines.append(
                (
                    "  " * row.depth + name,
                    row.type,
                    _shape_text(row.output_shape),
                    f"{params:,}" if params else "--",
                    f"{macs:,}" if macs else "--",
                )
            )
        widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]

        def fmt(cells: Sequence[str]) -> str:
            left = [cells[i].ljust(widths[i]) for i in range(3)]
            right = [cells[i].rjust(widths[i]) for i in range(3, 5)]
            return "  ".join(left + right).rstrip()

        rule = "-" * len(fmt(["-" * w for w in widths]))
        text = []
        if self.title:
            text.append(self.title)
        text += [rule, fmt(header), rule, *map(fmt, lines), rule]
        frozen = self.total_params - self.trainable_params
        text += [
            f"Input shape:          {_shape_text(self.input_shape)} (batch of 1)",
            f"Output shape:         {_shape_text(self.output_shape)}",
            f"Total params:         {self.total_params:,}",
            f"Trainable params:     {self.trainable_params:,}"
            + (f" ({frozen:,} frozen)" if frozen else ""),
            f"MACs per image:       {self.total_macs:,} ({self.total_macs / 1e6:.2f} M)",
            f"Param size (fp32):    {self.total_params * 4 / 2**20:.2f} MiB",
            rule,
        ]
        text += self.notes
        return "\n".join(text)


def summarize(
    model: nn.Module, input_shape: tuple[int, int, int], *, depth: int = 3
) -> ModelSummary:
    """One forward pass of a zero image of ``input_shape`` (C, H, W) through ``model``, hooked.

    The pass runs in eval mode without gradients, on the device of the model's parameters (CPU
    for a freshly built model); every module's train/eval mode is restored afterwards.
    """
    names = {module: name for name, module in model.named_modules()}
    rows = {
        module: LayerRow(
            name=name,
            type=type(module).__name__,
            depth=0 if not name else name.count(".") + 1,
            output_shape=None,
            params=sum(p.numel() for p in module.parameters(recurse=False)),
            macs=0,
            has_children=next(iter(module.children()), None) is not None,
        )
        for module, name in names.items()
    }

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        row = rows[module]
        row.calls += 1
        row.output_shape = _first_tensor_shape(output)
        row.macs += count_macs(module, inputs, output)

    output = _run_hooked(model, input_shape, hook)
    return ModelSummary(
        model_type=type(model).__name__,
        input_shape=tuple(input_shape),
        output_shape=_first_tensor_shape(output),
        rows=list(rows.values()),
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_macs=sum(row.macs for row in rows.values()),
        depth=depth,
    )


def count_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """Multiply-accumulates of one call of ``module`` (its own work, not its children's)."""
    custom = getattr(module, "macs", None)
    if callable(custom):
        return int(custom(inputs[0] if len(inputs) == 1 else inputs, output))
    out = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(out, torch.Tensor):
        return 0
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # before _ConvNd: it is a subclass
        kernel = math.prod(module.kernel_size)
        return inputs[0].numel() * module.out_channels // module.groups * kernel
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = math.prod(module.kernel_size)
        return out.numel() * module.in_channels // module.groups * kernel
    if isinstance(module, _NORMS):
        return out.numel()
    if isinstance(module, nn.MultiheadAttention):
        return _attention_macs(module, inputs)
    return 0


def _attention_macs(module: nn.MultiheadAttention, inputs: tuple[Any, ...]) -> int:
    query, key = inputs[0], inputs[1] if len(inputs) > 1 else inputs[0]
    seq_dim = 1 if module.batch_first else 0
    batch = query.numel() // (query.shape[seq_dim] * query.shape[-1])
    n_q, n_k, dim = query.shape[seq_dim], key.shape[seq_dim], module.embed_dim
    projections = n_q * dim * dim + n_k * dim * (module.kdim + module.vdim) + n_q * dim * dim
    attention = 2 * n_q * n_k * dim  # Q K^T and softmax(.) V, over all heads together
    return batch * (projections + attention)


def _run_hooked(model: nn.Module, input_shape: Sequence[int], hook: Any) -> Any:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = {module: module.training for module in model.modules()}
    handles = [module.register_forward_hook(hook) for module in model.modules()]
    try:
        model.eval()  # batch norm uses running statistics, dropout is off: batch of 1 works
        with torch.no_grad():
            return model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training


def _first_tensor_shape(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape[1:])  # drop the batch dimension
    if isinstance(value, (tuple, list)) and value:
        return _first_tensor_shape(value[0])
    return None


def _shape_text(shape: Sequence[int] | None) -> str:
    if shape is None:  # the module did not run in the forward pass
        return "--"
    return "x".join(map(str, shape)) if shape else "scalar"


# --- What the CLI prints ---------------------------------------------------------------------


def dataset_shape(dataset: str) -> tuple[int, int, int, int]:
    """(channels, height, width, classes) of a data set, from ``tinyvision.data``'s table."""
    from tinyvision.data import DATASET_INFO

    if dataset not in DATASET_INFO:
        from tinyvision.errors import ConfigError

        raise ConfigError(f"unknown data set {dataset!r}; known: {', '.join(sorted(DATASET_INFO))}")
    info = DATASET_INFO[dataset]
    channels, height, width = info.image_shape
    return channels, height, width, len(info.classes)


def summary_text(
    model_name_or_config_path: str,
    dataset: str | None = None,
    overrides: Sequence[str] = (),
    *,
    depth: int = 3,
) -> str:
    """The summary table of a model built for ``dataset``'s images, plus the answers to its
    brief's questions (a DenseNet's shapes) as sentences.

    ``model_name_or_config_path`` is a registered variant name or a TOML config file;
    ``overrides`` are ``section.key=value`` strings (``model.growth_rate=32``). ``dataset`` names
    the data set whose image shape the model is built for; ``None`` takes the config file's
    ``data.dataset``, which is fashion-mnist for a variant name.
    """
    from tinyvision.config import load_config, toml_value
    from tinyvision.models import create_model, get_variant

    target = model_name_or_config_path
    extra = [f"data.dataset={toml_value(dataset)}"] if dataset is not None else []
    if target.endswith(".toml") or Path(target).is_file():
        config = load_config(target, [*overrides, *extra])
    else:  # a variant name: the defaults of every section, this model
        config = load_config(None, [f"model.name={toml_value(target)}", *overrides, *extra])
    channels, height, width, classes = dataset_shape(config.data.dataset)
    model = create_model(
        config.model_name,
        in_chans=channels,
        num_classes=classes,
        image_size=(height, width),
        **config.model_params,
    )
    summary = summarize(model, (channels, height, width), depth=depth)
    summary.title = (
        f"{config.model_name} ({type(model).__name__}) for {config.data.dataset}: "
        f"{channels}x{height}x{width} images, {classes} classes"
    )
    text = summary.to_text()
    brief = get_variant(config.model_name).brief
    if brief is not None and brief.answers is not None:
        text += "\n" + brief.answers(model, (channels, height, width))
    return text
