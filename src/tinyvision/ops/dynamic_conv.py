"""The dynamic convolution as an operator: O_b = sum_k a_bk Conv_k(X_b), naive and fast.

    dynamic_conv2d(x, a, weight, bias, stride=, padding=, impl=, method=)
        x [B, d, H, W], a [B, K] (one set of mixing weights per image), weight [K, d', d, k, k]

Two implementations compute the same function:

- ``impl="naive"`` (the reference): K ordinary convolutions and the weighted sum, literally
  brief B's formula (``_naive_dynamic_conv2d``). It costs K convolutions.
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
      "nhwc"     channels-last: one grouped conv per few images (``NHWC_GROUP``) over a
                 [1, g*d, H, W] channels-last view, forward and backward (dX and G in one
                 call); the CPU's choice for channels-last inputs from 16x16 up, where oneDNN's
                 NHWC convolutions are much faster than its channels-first grouped ones
      "sum"      no per-image kernels at all: the brief's sum of K convolutions (the naive
                 reference itself), K times the FLOPs of one convolution but none of the
                 per-image traffic; the fastest on 4x4 images (see the end), and always
                 taken with one kernel (K = 1: one ordinary convolution, scaled by a)

  and ``choose_method`` picks one per device and layer shape from the measurements in
  docs/benchmarks.md ("Dynamic-convolution layer", ``benchmarks/dynconv_layer.py``).

Why the fast path misses its target on small images (256 channels at 8x8 and 4x4) is memory
traffic, not FLOPs: per image Wb_b and G_b hold P = d' d k k values (2.4 MB at 256 channels in
float32) and are written and read about seven times per step, while the convolution does only
2 P H W FLOPs with them. There the plain sum of K convolutions ("sum") is the fastest choice.

The network built from this operator is ``tinyvision.models.dynconv``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F

Impl = Literal["naive", "fast", "auto"]
Method = Literal["grouped", "hybrid", "bmm", "nhwc", "sum"]

# Bytes of per-image kernels (and, in backward, per-image weight gradients) per chunk of images.
# CPU: small enough to stay in the last-level cache; GPU: large, only to bound memory.
CHUNK_BYTES = {"cpu": 32 * 2**20, "cuda": 2 * 2**30}
# Images per grouped convolution of the "nhwc" method: enough to amortise oneDNN's cost per call
# (about 40-70 us, the per-image kernels' reorder included), few enough that a group's kernels
# stay in the core's L2 cache. On the project's AVX2 machine 2, 4, 8 and 16 measured within the
# run-to-run noise of each other (docs/benchmarks.md "Dynamic convolution, channels-last").
NHWC_GROUP = 8


def choose_method(
    device_type: str, in_chans: int, out_positions: int, channels_last: bool = False
) -> Method:
    """The fast path's per-image convolutions for this device, layout and layer shape, as
    measured in docs/benchmarks.md ("Dynamic-convolution layer" and "Dynamic convolution,
    channels-last")."""
    if device_type == "cpu" and channels_last:
        # oneDNN's NHWC convolutions: grouped over a few images from 16x16 up; below, the
        # per-image kernels' traffic outweighs K times the FLOPs of one convolution.
        return "nhwc" if out_positions >= 256 else "sum"
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
    # wrong logits); the brief's formula computes the same function from standard ops. With
    # one kernel (K = 1, the static twin of a dynamic network) the formula is a single ordinary
    # convolution scaled by a, which per-image kernels could only make slower.
    one_kernel = weight.shape[0] == 1
    if impl == "naive" or one_kernel or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return _naive_dynamic_conv2d(x, a, weight, bias, stride, padding)
    if method is None:
        out_h, out_w = _output_size(x, weight.shape[3], stride, padding)
        out_positions = out_h * out_w
        # An input that is NHWC-contiguous counts as channels-last even when it is NCHW-
        # contiguous too (one channel, the stem on Fashion-MNIST): else the stem answers NCHW
        # and every later layer of a channels-last network falls back to channels-first.
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        method = choose_method(x.device.type, x.shape[1], out_positions, channels_last)
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
        # a_k Conv_k(X), one a_k per image. The convolution's output comes first and a_k in its
        # dtype, so the product keeps the output's layout (channels-last) and precision (bf16
        # under autocast); a_k * Conv_k(X) in float32 cost the static twin's step 2.3x.
        term = conv_k * a[:, k].to(conv_k.dtype).view(-1, 1, 1, 1)
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
        ctx.conv = (stride, padding, method)
        if method == "nhwc":
            x = x.contiguous(memory_format=torch.channels_last)
            with _autocast_off(x.device.type):
                out = _nhwc_forward(x, a, weight, stride, padding)
            ctx.save_for_backward(x, a, weight)
            return out
        channels_last = _is_channels_last(x)
        x = x.contiguous()  # the per-image views below need NCHW
        with _autocast_off(x.device.type):
            out = _per_image_forward(x, a, weight, stride, padding, method)
        ctx.save_for_backward(x, a, weight)  # not Wb: B times the kernels, recomputed instead
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, a, weight = ctx.saved_tensors
        stride, padding, method = ctx.conv
        need_x, need_a, need_w = ctx.needs_input_grad[:3]
        with _autocast_off(x.device.type):
            if method == "nhwc":
                grads = _nhwc_backward(
                    grad_out.contiguous(memory_format=torch.channels_last),
                    x,
                    a,
                    weight,
                    stride,
                    padding,
                    need_x,
                    need_a,
                    need_w,
                )
            else:
                grads = _per_image_backward(
                    grad_out.contiguous(),
                    x,
                    a,
                    weight,
                    stride,
                    padding,
                    method,
                    need_x,
                    need_a,
                    need_w,
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
    out_h, out_w = _output_size(x, kernel, stride, padding)
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


def _to_groups(x_nhwc: torch.Tensor) -> torch.Tensor:
    """[g, H, W, d] (channels-last images) -> a channels-last [1, g*d, H, W] copy, image-major
    channels: the input of a grouped convolution with one group per image."""
    g, height, width, d = x_nhwc.shape
    return x_nhwc.permute(1, 2, 0, 3).reshape(1, height, width, g * d).permute(0, 3, 1, 2)


def _from_groups(y: torch.Tensor, g: int) -> torch.Tensor:
    """The inverse view: a channels-last [1, g*d, H, W] -> [g, H, W, d] (a strided view)."""
    _, gd, height, width = y.shape
    return y.permute(0, 2, 3, 1).reshape(height, width, g, gd // g).permute(2, 0, 1, 3)


def _kernels_nhwc(weight: torch.Tensor) -> torch.Tensor:
    """W_k flattened in channels-last order (d', ky, kx, d): [K, P]. Per-image kernels mixed from
    it are channels-last grouped-conv weights without a copy, and oneDNN's weight gradients
    (channels-last for channels-last inputs) are per-image rows in the same order."""
    return weight.permute(0, 1, 3, 4, 2).reshape(weight.shape[0], -1)


def _group_kernels(w_b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-image kernels [g, P] (w_nhwc's order) as a channels-last grouped-conv weight
    [g*d', d, k, k]: a view."""
    _, d_out, d_in, kernel, _ = weight.shape
    return w_b.view(w_b.shape[0] * d_out, kernel, kernel, d_in).permute(0, 3, 1, 2)


def _groups(part: slice) -> Iterator[slice]:
    """NHWC_GROUP images at a time within a chunk, as slices relative to the chunk."""
    size = part.stop - part.start
    for start in range(0, size, NHWC_GROUP):
        yield slice(start, min(size, start + NHWC_GROUP))


def _nhwc_forward(
    x: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, stride: int, padding: int
) -> torch.Tensor:
    """conv(X_b, Wb_b) for channels-last x, NHWC_GROUP images per grouped convolution."""
    _, d_out, _, kernel, _ = weight.shape
    batch = x.shape[0]
    out_h, out_w = _output_size(x, kernel, stride, padding)
    w_nhwc = _kernels_nhwc(weight)
    x_nhwc = x.permute(0, 2, 3, 1)  # a view: x is channels-last
    out = x.new_empty(batch, out_h, out_w, d_out)  # NHWC, returned as a channels-last NCHW view
    for chunk in _chunks(batch, weight, w_nhwc.shape[1]):
        # Every kernel of the chunk in one matrix product (one call, all threads), then the
        # chunk's images NHWC_GROUP at a time.
        w_chunk = torch.mm(a[chunk], w_nhwc)  # Wb_b = sum_k a_bk W_k: [c, P]
        x_chunk, out_chunk = x_nhwc[chunk], out[chunk]
        for part in _groups(chunk):
            g = part.stop - part.start
            y = F.conv2d(
                _to_groups(x_chunk[part]),
                _group_kernels(w_chunk[part], weight),
                None,
                stride,
                padding,
                1,
                g,
            )
            out_chunk[part] = _from_groups(y, g)
    return out.permute(0, 3, 1, 2)


def _nhwc_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    weight: torch.Tensor,
    stride: int,
    padding: int,
    need_x: bool,
    need_a: bool,
    need_w: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """dX, da and dW for ``_nhwc_forward``: per group one grouped-conv backward gives dX and G;
    per chunk one matrix product each mixes the kernels, gives dW and gives da."""
    w_nhwc = _kernels_nhwc(weight)  # rows in (d', ky, kx, d) order, as G_b below
    x_nhwc, go_nhwc = x.permute(0, 2, 3, 1), grad_out.permute(0, 2, 3, 1)
    grad_x = torch.empty_like(x_nhwc) if need_x else None  # NHWC
    grad_a = torch.empty_like(a) if need_a else None
    acc_dtype = torch.promote_types(weight.dtype, torch.float32)
    grad_w = torch.zeros(w_nhwc.shape, dtype=acc_dtype, device=x.device) if need_w else None
    need_g = need_a or need_w
    for chunk in _chunks(x.shape[0], weight, 2 * w_nhwc.shape[1]):
        w_chunk = torch.mm(a[chunk], w_nhwc)  # Wb_b, recomputed: [c, P]
        g_chunk = torch.empty_like(w_chunk) if need_g else None  # G_b = dL/dWb_b: [c, P]
        x_chunk, go_chunk = x_nhwc[chunk], go_nhwc[chunk]
        for part in _groups(chunk):
            g = part.stop - part.start
            gx, gw, _ = torch.ops.aten.convolution_backward(
                _to_groups(go_chunk[part]),
                _to_groups(x_chunk[part]),
                _group_kernels(w_chunk[part], weight),
                None,
                [stride, stride],
                [padding, padding],
                [1, 1],
                False,
                [0, 0],
                g,
                [need_x, need_g, False],
            )
            if grad_x is not None:
                grad_x[chunk][part] = _from_groups(gx, g)
            if g_chunk is not None:  # oneDNN's channels-last gradient, rows in w_nhwc's order
                g_chunk[part] = gw.permute(0, 2, 3, 1).reshape(g, -1)
        if grad_w is not None:
            grad_w += torch.mm(a[chunk].t(), g_chunk)  # dW_k = sum_b a_bk G_b
        if grad_a is not None:
            torch.mm(g_chunk, w_nhwc.t(), out=grad_a[chunk])  # da_bk = <G_b, W_k>
    if grad_x is not None:
        grad_x = grad_x.permute(0, 3, 1, 2)  # channels-last NCHW view
    if grad_w is not None:
        num_k, d_out, d_in, kernel, _ = weight.shape
        grad_w = grad_w.view(num_k, d_out, kernel, kernel, d_in).permute(0, 1, 4, 2, 3)
        grad_w = grad_w.contiguous().to(weight.dtype)
    return grad_x, grad_a, grad_w


def _output_size(x: torch.Tensor, kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """H' and W' of a k x k convolution of ``x`` ([B, d, H, W]) with this stride and padding."""
    height, width = x.shape[2:]
    out_h = (height + 2 * padding - kernel) // stride + 1
    out_w = (width + 2 * padding - kernel) // stride + 1
    return out_h, out_w


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
