"""Dynamic-convolution CNN (brief B).

The brief, for a block on input X with d channels (one set of mixing weights per image):

    mixing weights  a = g(SpatialAveragePool(X) W)          W: d x K          (``KernelMixing``)
    block output    O = a_1 Conv_1(X) + ... + a_K Conv_K(X)  K convs d -> d', k x k, padding k//2
                                                                              (``DynamicConv2d``)
    classifier      logits = head(SpatialAveragePool(O_N))   softmax regression or an MLP
                                                                   (``DynConvNet.forward_head``)

``KernelMixing.forward`` computes a (with a temperature T: a = g(pool(X) W / T), T = 1 is the
brief; ``set_temperature`` lets a training loop anneal it, as Chen et al. 2020 do for softmax).
``DynamicConv2d`` holds the K kernels as one parameter ``weight`` of shape [K, d', d, k, k]
(W_1..W_K) and computes O with one of two implementations that compute the same function:

- ``impl="naive"`` (the reference): K ordinary convolutions and the weighted sum, literally the
  brief's formula (``_naive_dynamic_conv2d``). It costs K convolutions.
- ``impl="fast"`` (``"auto"`` picks it): convolution is linear in its kernel, so per image b
  O_b = conv(X_b, Wb_b) with Wb_b = sum_k a_bk W_k (``_DynamicConv2dFn``): one convolution's
  FLOPs plus K/(H*W) of it for the mixing. Its backward is written by hand, because autograd's
  backward of a per-image (grouped) convolution computes the per-image weight gradients slowly:

      Wb_b      = sum_k a_bk W_k                 recomputed in backward, never saved (memory)
      dX_b      = conv_transpose(dO_b, Wb_b)     per-image input gradient
      G_b       = dO_b unfold(X_b)^T             per-image weight gradient dL/dWb_b: one batched
                                                 matmul [B, d', d k k], the FLOPs of one ordinary
                                                 weight gradient
      dW_k      = sum_b a_bk G_b                 [K, B] @ [B, P]: K/(H*W) of the convolution
      da_bk     = <G_b, W_k>                     [B, P] @ [P, K]: likewise

  The batch is processed in chunks so that the per-image kernels Wb and gradients G of a chunk
  stay in the last-level cache (CPU) or within a memory budget (GPU): ``CHUNK_BYTES``. The
  per-image convolutions (``method``) are computed by

      "grouped"  one grouped conv over a [1, c*d, H, W] view, groups = c (oneDNN / cuDNN); its
                 own backward gives dX and G in one call
      "hybrid"   grouped conv for the forward and dX; G as one batched matmul over im2col
      "bmm"      im2col + batched matmul for all three (dX through col2im)
      "sum"      no per-image kernels at all: the brief's sum of K convolutions (the naive
                 reference itself), K times the FLOPs of one convolution but none of the
                 per-image traffic; the fastest on 4x4 images (see below)

  and ``choose_method`` picks one per device and layer shape from the measurements below.

Measured (``python benchmarks/dynconv_layer.py --device cpu --threads 1 --clock cpu``, the
CIFAR-10 recipe's layers, batch 64, float32, K = 4; the project's 2-core AMD EPYC machine on
2026-11-30, the other core busy, so CPU time of the process over 7 rounds; torch 2.13).
Forward + backward time over the time of ONE ordinary ``F.conv2d`` of the same shape (input and
weight requiring grad); "naive" is also what "sum" costs:

    layer (d -> d' @ HxW)   conv ms   naive   grouped   hybrid   bmm    auto picks
    3 -> 32 @ 32x32            16.1    6.47     1.27     0.82   1.05    bmm
    32 -> 64 @ 32x32           77.6    4.33     1.14     1.22   1.68    grouped
    64 -> 64 @ 16x16           34.7    4.22     1.40     1.54   2.05    grouped
    64 -> 256 @ 16x16         132.2    4.38     1.37     1.38   1.51    grouped
    256 -> 256 @ 8x8 (x2)     118.7    4.10     2.53     2.43   2.37    hybrid
    256 -> 256 @ 4x4           29.0    4.15     7.80     6.46   5.73    sum

On this CPU the fast path is 3-4x faster than the naive sum from 16x16 up and within 0.8-1.5x
of one convolution there, but it misses the 1.3x target at 256 channels on 8x8 (~2.4x) and 4x4,
where the per-image paths cost 6-8x and the plain sum of K convolutions (~4.2x) is the fastest,
so "auto" picks it. The reason is memory traffic, not FLOPs: per image Wb_b and G_b hold
P = d' d k k values (2.4 MB at 256 channels in float32) and are written and read about seven
times per step, while the convolution does only 2 P H W FLOPs with them; at 8x8 and 4x4 that
traffic costs more than the convolution. Meeting the target there needs a kernel that mixes
sum_k a_bk W_k tile by tile in cache (or GPU shared memory) inside the convolution's GEMM, so
that Wb and G never reach memory; stock PyTorch ops cannot. (Stacking the K kernels into one
convolution with K d' outputs, then mixing, measured 4.3x at 4x4: no better than the sum.) GPU
figures: to be measured (``--device cuda --amp``); ``choose_method`` picks "hybrid" there.

Extras around the core, all optional: a bias in the mixing layer or an MLP with a reduction
(``gate_bias``, ``gate_reduction``); per-kernel biases mixed like the weights (``conv_bias``);
batch norm and an activation after each dynamic convolution; down-sampling at the start of each
stage (max/avg pooling after the stage's first convolution, as airbench does, or a strided first
convolution); skip connections around pairs of convolutions; a plain-conv stem; an MLP head and
dropout. With them all off, every convolution of the network is a dynamic convolution of the
brief, and the network is: stem block -> stages of blocks -> average pool -> linear.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator
from torch import nn

from tinyvision.models import Brief, register_variant
from tinyvision.models.layers import ACTIVATIONS

Gate = Literal["softmax", "sigmoid", "relu", "identity"]
Impl = Literal["naive", "fast", "auto"]
Method = Literal["grouped", "hybrid", "bmm", "sum"]


class DynConvConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The dynamic convolution (every convolution of the network is one):
    num_kernels: PositiveInt = 4  # K
    kernel_size: PositiveInt = 3  # k; padding k // 2 keeps H x W at stride 1
    gate: Gate = "softmax"  # g
    temperature: float = Field(1.0, gt=0.0)  # a = g(z / T); set_temperature() can anneal it
    impl: Impl = "auto"  # naive = K convs and the sum; fast/auto = per fast_method
    # How the fast path computes (per-image kernels, or "sum" of K convs); auto = the measured
    # choice per device and layer shape.
    fast_method: Literal["auto", "grouped", "hybrid", "bmm", "sum"] = "auto"
    # The network: a stem block, then stages of blocks with one width each.
    stem: Literal["dynamic", "plain"] = "dynamic"  # plain = an ordinary conv (an extra)
    stem_width: PositiveInt = 32
    widths: list[PositiveInt] = Field(default=[64, 128, 256], min_length=1)  # d' of each stage
    depths: PositiveInt | list[PositiveInt] = 1  # dynamic convs per stage: one value or a list
    # Down-sampling factor of each stage (applied at its first conv); [] = 1, then 2, 2, ...
    strides: list[PositiveInt] = []
    downsample: Literal["maxpool", "avgpool", "stride"] = "maxpool"
    activation: Literal["none", "relu", "gelu", "silu", "tanh"] = "relu"  # after each conv
    # Extras around the core (all off = the brief's minimum):
    norm: Literal["none", "batch"] = "none"  # batch norm after each dynamic conv
    # Residual connections around each pair of convs after a stage's first (a lone last one
    # gets its own), as in airbench96 and ResNet's basic block:
    skip: bool = False
    gate_bias: bool = False  # a bias in the mixing layer: a = g(pool(X) W + c)
    gate_reduction: NonNegativeInt = 0  # > 0: the mixing layer is an MLP d -> d/r -> K
    conv_bias: bool = False  # per-kernel biases, mixed like the kernels: sum_k a_k b_k
    head_hidden: NonNegativeInt = 0  # 0 = softmax regression; > 0 = MLP classifier
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # before the classifier

    @model_validator(mode="after")
    def _check(self) -> DynConvConfig:
        if self.kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd so padding k//2 keeps the size (got {self.kernel_size})"
            )
        for name in ("depths", "strides"):
            value = getattr(self, name)
            if isinstance(value, list) and value and len(value) != len(self.widths):
                raise ValueError(
                    f"{name} has {len(value)} entries but there are {len(self.widths)} stages"
                )
        return self

    def stage_depths(self) -> list[int]:
        value = self.depths
        return list(value) if isinstance(value, list) else [value] * len(self.widths)

    def stage_strides(self) -> list[int]:
        return list(self.strides) or [1] + [2] * (len(self.widths) - 1)


# ---------------------------------------------------------------------------------------------
# The layer: O_b = sum_k a_bk Conv_k(X_b), naive and fast.
# ---------------------------------------------------------------------------------------------

# Bytes of per-image kernels (and, in backward, per-image weight gradients) per chunk of images.
# CPU: small enough to stay in the last-level cache; GPU: large, only to bound memory.
CHUNK_BYTES = {"cpu": 32 * 2**20, "cuda": 2 * 2**30}


def choose_method(device_type: str, in_chans: int, out_positions: int) -> Method:
    """The fast path's per-image convolutions for this device and layer shape (see the table)."""
    if device_type != "cpu":
        # Not yet measured on a GPU: cuDNN's grouped conv avoids im2col's memory traffic in
        # forward and dX; G as a batched matmul avoids the grouped conv's weight gradient.
        return "hybrid"
    # CPU (oneDNN), measured: im2col + bmm for the stem's few input channels; on 4x4 images the
    # plain sum of K convolutions (per-image kernels cost more traffic than K times the FLOPs);
    # grouped convs from 16x16 up; in between, grouped forward/dX and a bmm for G (oneDNN's
    # grouped weight gradient is slow at 256 channels).
    if in_chans <= 4:
        return "bmm"
    if out_positions < 64:
        return "sum"
    if out_positions < 256:
        return "hybrid"
    return "grouped"


def dynamic_conv2d(
    x: torch.Tensor,
    a: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride: int = 1,
    padding: int = 0,
    impl: Impl = "auto",
    method: Method | None = None,
) -> torch.Tensor:
    """O_b = sum_k a_bk conv(X_b, W_k) + sum_k a_bk bias_k, for x [B, d, H, W], a [B, K],
    weight [K, d', d, k, k] and bias [K, d'] (or None)."""
    if x.ndim != 4 or a.shape != (x.shape[0], weight.shape[0]) or weight.shape[2] != x.shape[1]:
        raise ValueError(
            f"dynamic_conv2d: x {tuple(x.shape)}, a {tuple(a.shape)} and weight "
            f"{tuple(weight.shape)} do not fit ([B, d, H, W], [B, K], [K, d', d, k, k])"
        )
    # Tracing (ONNX export, torch.jit.trace) would bake the fast path's per-chunk batch sizes
    # into the graph and lose its writes into a new_empty() output (onnxruntime then returns
    # wrong logits); the brief's formula computes the same function from standard ops.
    if impl == "naive" or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return _naive_dynamic_conv2d(x, a, weight, bias, stride, padding)
    if method is None:
        out_positions = ((x.shape[2] + 2 * padding - weight.shape[3]) // stride + 1) * (
            (x.shape[3] + 2 * padding - weight.shape[4]) // stride + 1
        )
        method = choose_method(x.device.type, x.shape[1], out_positions)
    if method == "sum":  # the brief's formula is itself the fastest choice for this shape
        return _naive_dynamic_conv2d(x, a, weight, bias, stride, padding)
    # Under autocast, cast here (differentiably) so the function computes in one dtype; the
    # function itself runs with autocast off, forward and backward, on every device.
    # (Without autocast, the weight's dtype: a may come from the float32 gate.)
    dtype = _autocast_dtype(x.device.type) or weight.dtype
    out = _DynamicConv2dFn.apply(
        x.to(dtype), a.to(dtype), weight.to(dtype), stride, padding, method
    )
    if bias is not None:
        out = out + (a @ bias)[:, :, None, None].to(out.dtype)  # sum_k a_bk bias_k
    return out


def _naive_dynamic_conv2d(
    x: torch.Tensor,
    a: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    padding: int,
) -> torch.Tensor:
    """The brief's formula, term by term: O = a_1 Conv_1(X) + ... + a_K Conv_K(X)."""
    out = None
    for k in range(weight.shape[0]):
        conv_k = F.conv2d(x, weight[k], None if bias is None else bias[k], stride, padding)
        term = a[:, k, None, None, None] * conv_k  # a_k Conv_k(X), one a_k per image
        out = term if out is None else out + term
    assert out is not None
    return out


class _DynamicConv2dFn(torch.autograd.Function):
    """O_b = conv(X_b, sum_k a_bk W_k), with the hand-written backward of the module docstring."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        a: torch.Tensor,
        weight: torch.Tensor,
        stride: int,
        padding: int,
        method: Method,
    ) -> torch.Tensor:
        channels_last = _is_channels_last(x)
        x = x.contiguous()  # the per-image views below need NCHW
        with _autocast_off(x.device.type):
            out = _per_image_forward(x, a, weight, stride, padding, method)
        ctx.save_for_backward(x, a, weight)  # not Wb: B times the kernels, recomputed instead
        ctx.conv = (stride, padding, method)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, a, weight = ctx.saved_tensors
        stride, padding, method = ctx.conv
        need_x, need_a, need_w = ctx.needs_input_grad[:3]
        with _autocast_off(x.device.type):
            grads = _per_image_backward(
                grad_out.contiguous(), x, a, weight, stride, padding, method, need_x, need_a, need_w
            )
        return (*grads, None, None, None)


def _chunks(batch: int, weight: torch.Tensor, per_image_numel: int) -> Iterator[slice]:
    """Slices of the batch whose per-image tensors fit the device's chunk budget."""
    per_image = per_image_numel * weight.element_size()
    size = max(1, min(batch, CHUNK_BYTES.get(weight.device.type, 2**30) // per_image))
    for start in range(0, batch, size):
        yield slice(start, min(batch, start + size))


def _unfold(x: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """im2col: [c, d, H, W] -> [c, d*k*k, H'*W'], rows ordered (d, ky, kx) like a conv kernel."""
    if kernel == 1 and stride == 1 and padding == 0:
        return x.flatten(2)  # a view
    # A strided view of the padded input copied once: 2-4x faster than F.unfold on CPU.
    xp = F.pad(x, (padding, padding, padding, padding)) if padding else x
    c, d, height, width = xp.shape
    out_h, out_w = (height - kernel) // stride + 1, (width - kernel) // stride + 1
    sb, sd, sh, sw = xp.stride()
    windows = xp.as_strided(
        (c, d, kernel, kernel, out_h, out_w), (sb, sd, sh, sw, sh * stride, sw * stride)
    )
    return windows.reshape(c, d * kernel * kernel, out_h * out_w)


def _grouped_conv_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    w_b: torch.Tensor,
    stride: int,
    padding: int,
    need_x: bool,
    need_w: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """dX and/or dWb (= G, [c, P]) of the grouped conv over a [1, c*d, H, W] view.

    ``w_b`` holds the chunk's per-image kernels as the grouped conv's [c*d', d, k, k] weight.
    """
    c = x.shape[0]
    gx, gw, _ = torch.ops.aten.convolution_backward(
        grad_out.reshape(1, -1, *grad_out.shape[2:]),
        x.reshape(1, -1, *x.shape[2:]),
        w_b,
        None,
        [stride, stride],
        [padding, padding],
        [1, 1],
        False,
        [0, 0],
        c,
        [need_x, need_w, False],
    )
    return (gx.view(x.shape) if need_x else None), (gw.view(c, -1) if need_w else None)


def _per_image_forward(
    x: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, stride: int, padding: int, method: str
) -> torch.Tensor:
    num_k, d_out, d_in, kernel, _ = weight.shape
    batch, _, height, width = x.shape
    out_h = (height + 2 * padding - kernel) // stride + 1
    out_w = (width + 2 * padding - kernel) // stride + 1
    w_flat = weight.reshape(num_k, -1)  # [K, P], P = d' d k k
    out = x.new_empty(batch, d_out, out_h, out_w)
    # Per image: its kernel Wb_b, its output and, for the matmul, its im2col columns.
    per_image = w_flat.shape[1] + d_out * out_h * out_w
    if method == "bmm":
        per_image += d_in * kernel * kernel * out_h * out_w
    for part in _chunks(batch, weight, per_image):
        c = part.stop - part.start
        w_b = torch.mm(a[part], w_flat)  # Wb_b = sum_k a_bk W_k: [c, P]
        if method == "bmm":  # conv(X_b, Wb_b) = Wb_b unfold(X_b): one batched matmul
            cols = _unfold(x[part], kernel, stride, padding)
            torch.bmm(w_b.view(c, d_out, -1), cols, out=out[part].view(c, d_out, -1))
        else:  # conv(X_b, Wb_b) for all b of the chunk: one grouped conv, groups = c
            y = F.conv2d(
                x[part].reshape(1, c * d_in, height, width),
                w_b.view(c * d_out, d_in, kernel, kernel),
                None,
                stride,
                padding,
                1,
                c,
            )
            if c == batch:
                return y.view(batch, d_out, out_h, out_w)  # one chunk: no copy into out
            out[part] = y.view(c, d_out, out_h, out_w)
    return out


def _per_image_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    weight: torch.Tensor,
    stride: int,
    padding: int,
    method: str,
    need_x: bool,
    need_a: bool,
    need_w: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    num_k, d_out, d_in, kernel, _ = weight.shape
    batch, _, height, width = x.shape
    w_flat = weight.reshape(num_k, -1)
    grad_x = torch.empty_like(x) if need_x else None
    grad_a = torch.empty_like(a) if need_a else None
    # dW accumulates over chunks: in float32 when computing in a lower precision.
    acc_dtype = torch.promote_types(weight.dtype, torch.float32)
    grad_w = torch.zeros(w_flat.shape, dtype=acc_dtype, device=x.device) if need_w else None
    need_g = need_a or need_w
    # Per image: Wb_b and G_b and, unless G comes from the grouped conv, im2col columns.
    per_image = 2 * w_flat.shape[1] + x[0].numel() + grad_out[0].numel()
    if method != "grouped":
        per_image += d_in * kernel * kernel * grad_out[0, 0].numel()
    for part in _chunks(batch, weight, per_image):
        c = part.stop - part.start
        x_c, go_c, a_c = x[part], grad_out[part], a[part]
        g = None  # G_b = dL/dWb_b for the images of the chunk: [c, P]
        # Wb_b = sum_k a_bk W_k, recomputed (not saved in forward).
        w_b = None
        if need_x or method == "grouped":
            w_b = torch.mm(a_c, w_flat).view(c * d_out, d_in, kernel, kernel)
        if method == "grouped":  # dX and G from the grouped conv's own backward, in one call
            gx, g = _grouped_conv_backward(go_c, x_c, w_b, stride, padding, need_x, need_g)
        elif method == "hybrid" and need_x:  # dX_b = conv_transpose(dO_b, Wb_b), grouped
            gx, _ = _grouped_conv_backward(go_c, x_c, w_b, stride, padding, True, False)
        elif method == "bmm" and need_x:  # dX_b = fold(Wb_b^T dO_b)
            cols = torch.bmm(w_b.view(c, d_out, -1).transpose(1, 2), go_c.flatten(2))
            gx = F.fold(cols, (height, width), kernel, padding=padding, stride=stride)
        if need_x:
            if c == batch:
                grad_x = gx  # one chunk: no copy
            else:
                grad_x[part] = gx
        if need_g and g is None:
            # G_b = dO_b unfold(X_b)^T: every image's weight gradient in one batched matmul.
            cols = _unfold(x_c, kernel, stride, padding)
            g = torch.bmm(go_c.flatten(2), cols.transpose(1, 2)).view(c, -1)
        if grad_w is not None and grad_w.dtype == g.dtype:
            grad_w.addmm_(a_c.t(), g)  # dW_k = sum_b a_bk G_b, accumulated in place
        elif grad_w is not None:
            grad_w += torch.mm(a_c.t(), g)  # the same, from a lower-precision G
        if grad_a is not None:
            torch.mm(g, w_flat.t(), out=grad_a[part])  # da_bk = <G_b, W_k>
    if grad_w is not None:
        grad_w = grad_w.view(weight.shape).to(weight.dtype)
    return grad_x, grad_a, grad_w


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in force for this device type, or None."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # torch < 2.4 has per-device functions
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        if device_type == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
        return None


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    if device_type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------

GATES = {
    "softmax": lambda z: torch.softmax(z, dim=-1),
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "identity": lambda z: z,
}


class KernelMixing(nn.Module):
    """a = g(SpatialAveragePool(X) W / T): K mixing weights per image."""

    def __init__(
        self,
        in_chans: int,
        num_kernels: int,
        *,
        gate: Gate = "softmax",
        temperature: float = 1.0,
        bias: bool = False,
        reduction: int = 0,
    ) -> None:
        super().__init__()
        self.gate = gate
        if reduction:  # an extra: an MLP d -> d/r -> K (Chen et al. 2020 use r = 4)
            hidden = max(4, in_chans // reduction)
            self.proj: nn.Module = nn.Sequential(
                nn.Linear(in_chans, hidden), nn.ReLU(), nn.Linear(hidden, num_kernels, bias=bias)
            )
        else:  # the brief: W is d x K (nn.Linear stores W^T, [K, d])
            self.proj = nn.Linear(in_chans, num_kernels, bias=bias)
        # A buffer, so annealing it neither recompiles a compiled model nor is lost on resume.
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))  # SpatialAveragePool(X): [B, d]
        logits = self.proj(pooled) / self.temperature  # pool(X) W / T: [B, K]
        # a = g(...), in at least float32: under autocast the gate's input arrives in bf16.
        return GATES[self.gate](logits.to(torch.promote_types(logits.dtype, torch.float32)))

    def extra_repr(self) -> str:
        return f"gate={self.gate}, temperature={self.temperature.item():g}"


class DynamicConv2d(nn.Module):
    """O = a_1 Conv_1(X) + ... + a_K Conv_K(X) with a = KernelMixing(X), per image."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        *,
        num_kernels: int = 4,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = False,
        gate: Gate = "softmax",
        temperature: float = 1.0,
        gate_bias: bool = False,
        gate_reduction: int = 0,
        impl: Impl = "auto",
        method: Method | None = None,
    ) -> None:
        super().__init__()
        self.in_chans, self.out_chans = in_chans, out_chans
        self.num_kernels, self.kernel_size = num_kernels, kernel_size
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.impl: Impl = impl
        self.method = method  # the fast path's per-image convs; None = choose_method()
        self.mixing = KernelMixing(
            in_chans,
            num_kernels,
            gate=gate,
            temperature=temperature,
            bias=gate_bias,
            reduction=gate_reduction,
        )
        # W_1..W_K, each d' x d x k x k, stacked: [K, d', d, k, k]
        self.weight = nn.Parameter(
            torch.empty(num_kernels, out_chans, in_chans, kernel_size, kernel_size)
        )
        self.bias = nn.Parameter(torch.empty(num_kernels, out_chans)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # He-normal kernels, scaled so the kernel mixed with the initial weights has He's scale:
        # softmax starts near a_k = 1/K (sum_k a_k^2 = 1/K), sigmoid near 1/2 (sum = K/4).
        fan_in = self.in_chans * self.kernel_size**2
        mix = {"softmax": self.num_kernels**0.5, "sigmoid": 2 / self.num_kernels**0.5}
        std = (2.0 / fan_in) ** 0.5 * mix.get(self.mixing.gate, 1.0)
        nn.init.normal_(self.weight, std=std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.mixing(x)  # [B, K]
        return dynamic_conv2d(
            x,
            a,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            impl=self.impl,
            method=self.method,
        )

    def set_temperature(self, temperature: float) -> None:
        self.mixing.temperature.fill_(temperature)

    def extra_repr(self) -> str:
        return (
            f"{self.in_chans}, {self.out_chans}, num_kernels={self.num_kernels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"bias={self.bias is not None}, impl={self.impl}"
        )


class ConvUnit(nn.Module):
    """One block of the brief plus its extras: dynamic conv -> [pool] -> [BN] -> [activation]."""

    def __init__(
        self, in_chans: int, out_chans: int, cfg: DynConvConfig, *, factor: int = 1
    ) -> None:
        super().__init__()
        strided = factor > 1 and cfg.downsample == "stride"
        self.conv = _dynamic_conv(in_chans, out_chans, cfg, stride=factor if strided else 1)
        # Pooling follows the conv (airbench's order: the conv sees the finer grid).
        if factor > 1 and cfg.downsample == "maxpool":
            self.pool: nn.Module = nn.MaxPool2d(factor)
        elif factor > 1 and cfg.downsample == "avgpool":
            self.pool = nn.AvgPool2d(factor)
        else:
            self.pool = nn.Identity()
        self.norm = nn.BatchNorm2d(out_chans) if cfg.norm == "batch" else nn.Identity()
        self.act = nn.Identity() if cfg.activation == "none" else ACTIVATIONS[cfg.activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.pool(self.conv(x))))


class Residual(nn.Sequential):
    """x + units(x): a skip connection around consecutive conv units (an extra)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


def _dynamic_conv(
    in_chans: int, out_chans: int, cfg: DynConvConfig, *, stride: int = 1
) -> DynamicConv2d:
    return DynamicConv2d(
        in_chans,
        out_chans,
        num_kernels=cfg.num_kernels,
        kernel_size=cfg.kernel_size,
        stride=stride,
        bias=cfg.conv_bias,
        gate=cfg.gate,
        temperature=cfg.temperature,
        gate_bias=cfg.gate_bias,
        gate_reduction=cfg.gate_reduction,
        impl=cfg.impl,
        method=None if cfg.fast_method == "auto" else cfg.fast_method,
    )


def _stage(in_chans: int, width: int, depth: int, factor: int, cfg: DynConvConfig) -> nn.Sequential:
    """The first unit changes the width and down-samples; skips pair up the units after it."""
    units: list[nn.Module] = [ConvUnit(in_chans, width, cfg, factor=factor)]
    rest = [ConvUnit(width, width, cfg) for _ in range(depth - 1)]
    if cfg.skip:
        units += [Residual(*rest[i : i + 2]) for i in range(0, len(rest), 2)]
    else:
        units += rest
    return nn.Sequential(*units)


class DynConvNet(nn.Module):
    """stem block -> stages of dynamic-conv blocks -> spatial average pool -> classifier."""

    Config = DynConvConfig
    brief = Brief(
        "B",
        "Dynamic-convolution CNN",
        "blocks of K convolutions mixed per image by a = g(SpatialAveragePool(X) W) → spatial "
        "average pooling → softmax regression.",
    )

    def __init__(
        self, cfg: DynConvConfig, *, in_chans: int, num_classes: int, image_size: tuple[int, int]
    ) -> None:
        super().__init__()
        _check_image_size(cfg, image_size)
        if cfg.stem == "plain":  # an extra: an ordinary conv in place of the first dynamic one
            conv: nn.Module = nn.Conv2d(
                in_chans,
                cfg.stem_width,
                cfg.kernel_size,
                padding=cfg.kernel_size // 2,
                bias=cfg.norm == "none",  # a batch norm's shift makes a bias redundant
            )
            norm = nn.BatchNorm2d(cfg.stem_width) if cfg.norm == "batch" else nn.Identity()
            act = nn.Identity() if cfg.activation == "none" else ACTIVATIONS[cfg.activation]()
            self.stem: nn.Module = nn.Sequential(conv, norm, act)
        else:
            self.stem = ConvUnit(in_chans, cfg.stem_width, cfg)
        stages, channels = [], cfg.stem_width
        for width, depth, factor in zip(
            cfg.widths, cfg.stage_depths(), cfg.stage_strides(), strict=True
        ):
            stages.append(_stage(channels, width, depth, factor, cfg))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.num_features = channels
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.head_hidden:
            act = ACTIVATIONS["relu" if cfg.activation == "none" else cfg.activation]
            self.head: nn.Module = nn.Sequential(
                nn.Linear(channels, cfg.head_hidden),
                act(),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.head_hidden, num_classes),
            )
        else:
            self.head = nn.Linear(channels, num_classes)  # softmax regression

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(images))  # O_N: [B, d_N, h, w]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(features.mean(dim=(2, 3))))  # f = SpatialAveragePool(O_N)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def dynamic_convs(self) -> list[DynamicConv2d]:
        return [m for m in self.modules() if isinstance(m, DynamicConv2d)]

    def set_temperature(self, temperature: float) -> None:
        """Set the gate temperature T of every dynamic conv (for annealing schedules)."""
        for conv in self.dynamic_convs():
            conv.set_temperature(temperature)


def _check_image_size(cfg: DynConvConfig, image_size: tuple[int, int]) -> None:
    height, width = image_size
    for i, factor in enumerate(cfg.stage_strides()):
        if factor > 1 and min(height, width) < factor:
            raise ValueError(
                f"a {image_size[0]}x{image_size[1]} image is too small for the down-sampling: "
                f"stage {i + 1} would get {height}x{width} input and down-sample it by {factor}"
            )
        # Pools floor the size; a conv of stride s with padding k//2 rounds it up.
        if cfg.downsample == "stride":
            height, width = -(-height // factor), -(-width // factor)
        else:
            height, width = height // factor, width // factor


# Variants: names for the configurations people ask for; each only sets arguments.
register_variant(
    "dynconv_brief",
    DynConvNet,
    "brief B's minimum: every conv dynamic (K=4, softmax), ReLU, max-pool, no BN/skip, linear head",
    stem_width=32,
    widths=[64, 128, 256],
    depths=1,
)
register_variant(
    "dynconv",
    DynConvNet,
    "airbench-like: dynamic convs 64/256/256 with BN-GELU, max-pool after each stage's first conv",
    stem_width=32,
    widths=[64, 256, 256],
    depths=2,
    strides=[2, 2, 2],
    norm="batch",
    activation="gelu",
)
