"""Brief B: the dynamic convolution (naive reference vs fast path) and the CNN built from it."""

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tinyvision.config import load_config
from tinyvision.errors import ConfigError
from tinyvision.models import create_model, model_config
from tinyvision.models.dynconv import DynamicConv2d
from tinyvision.ops.dynamic_conv import dynamic_conv2d

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
METHODS = ["grouped", "hybrid", "bmm", "nhwc"]
DOUBLE = torch.float64


def build(name="dynconv", image=(3, 32, 32), **overrides):
    return create_model(name, in_chans=image[0], num_classes=10, image_size=image[1:], **overrides)


def small(name="dynconv", image=(3, 32, 32), **overrides):
    """A narrow variant of ``name``: the same structure, quick on a CPU."""
    return build(name, image, **{"stem_width": 4, "widths": [6, 8, 8], **overrides})


def layer_grads(layer: DynamicConv2d, x: torch.Tensor, grad: torch.Tensor):
    """Output and gradients w.r.t. the input and every parameter (mixing, kernels, biases)."""
    out = layer(x)
    params = [x, *layer.parameters()]
    return (out, *torch.autograd.grad(out, params, grad))


# -- the layer: fast == naive ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "d_in", "d_out", "size", "kernel", "stride", "num_kernels"),
    [
        (1, 3, 8, 9, 3, 1, 4),
        (4, 3, 8, 8, 1, 1, 2),
        (3, 16, 32, 7, 3, 2, 4),
        (2, 16, 32, 6, 5, 1, 2),
        (2, 16, 32, 9, 5, 2, 2),
        (1, 8, 8, 5, 1, 2, 4),
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_fast_matches_naive_with_gradients(
    batch, d_in, d_out, size, kernel, stride, num_kernels, method
):
    torch.manual_seed(0)
    layer = DynamicConv2d(
        d_in,
        d_out,
        num_kernels=num_kernels,
        kernel_size=kernel,
        stride=stride,
        bias=True,
        gate_bias=True,
    ).to(DOUBLE)
    x = torch.randn(batch, d_in, size, size, dtype=DOUBLE, requires_grad=True)
    grad = torch.randn(
        batch, d_out, (size - 1) // stride + 1, (size - 1) // stride + 1, dtype=DOUBLE
    )
    layer.impl = "naive"
    expected = layer_grads(layer, x, grad)
    layer.impl, layer.method = "fast", method
    got = layer_grads(layer, x, grad)
    assert got[0].shape == grad.shape
    names = ["output", "input", *(n for n, _ in layer.named_parameters())]
    for name, e, g in zip(names, expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=f"{method}: {name} differs")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("kernel", "stride"), [(3, 2), (1, 1)])
def test_fast_gradcheck(method, kernel, stride):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 5, 5, dtype=DOUBLE, requires_grad=True)
    a = torch.randn(2, 3, dtype=DOUBLE, requires_grad=True)
    weight = torch.randn(3, 4, 2, kernel, kernel, dtype=DOUBLE, requires_grad=True)
    bias = torch.randn(3, 4, dtype=DOUBLE, requires_grad=True)

    def fast(x, a, weight, bias):
        return dynamic_conv2d(
            x, a, weight, bias, stride=stride, padding=kernel // 2, impl="fast", method=method
        )

    assert torch.autograd.gradcheck(fast, (x, a, weight, bias), fast_mode=True)


def test_fast_chunks_the_batch_without_changing_the_result(monkeypatch):
    from tinyvision.ops import dynamic_conv

    torch.manual_seed(0)
    x = torch.randn(5, 4, 6, 6, dtype=DOUBLE, requires_grad=True)
    a = torch.randn(5, 2, dtype=DOUBLE, requires_grad=True)
    weight = torch.randn(2, 3, 4, 3, 3, dtype=DOUBLE, requires_grad=True)
    for method in METHODS:
        whole = dynamic_conv2d(x, a, weight, padding=1, impl="fast", method=method)
        grads = torch.autograd.grad(whole.sum(), (x, a, weight))
        monkeypatch.setitem(dynamic_conv.CHUNK_BYTES, "cpu", 1)  # one image per chunk
        monkeypatch.setattr(dynamic_conv, "NHWC_GROUP", 2)  # groups of 2, 2 and 1 images
        chunked = dynamic_conv2d(x, a, weight, padding=1, impl="fast", method=method)
        torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
        for g, e in zip(torch.autograd.grad(chunked.sum(), (x, a, weight)), grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
        monkeypatch.undo()


def test_one_kernel_is_one_ordinary_convolution(monkeypatch):
    """K = 1 (a dynamic network's static twin) never builds per-image kernels: a conv, scaled."""
    from tinyvision.ops import dynamic_conv

    def per_image_path(*args):
        raise AssertionError("per-image kernels built for K = 1")

    monkeypatch.setattr(dynamic_conv._DynamicConv2dFn, "apply", per_image_path)
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 8, dtype=DOUBLE)
    a = torch.rand(3, 1, dtype=DOUBLE) + 0.5
    weight = torch.randn(1, 6, 4, 3, 3, dtype=DOUBLE)
    for method in [None, *METHODS]:
        out = dynamic_conv2d(x, a, weight, padding=1, impl="fast", method=method)
        expected = a[:, :, None, None] * F.conv2d(x, weight[0], padding=1)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    softmax_layer = DynamicConv2d(4, 6, num_kernels=1).double()
    torch.testing.assert_close(  # softmax over one kernel: a = 1, the plain convolution
        softmax_layer(x), F.conv2d(x, softmax_layer.weight[0], padding=1), rtol=1e-12, atol=1e-12
    )


def test_static_twin_layer_is_a_plain_convolution_without_gate():
    """Softmax over K = 1 is a = 1 for every image: the layer skips the gate (no gradient)."""
    torch.manual_seed(0)
    layer = DynamicConv2d(4, 6, num_kernels=1, bias=True).double()
    x = torch.randn(3, 4, 8, 8, dtype=DOUBLE)
    out = layer(x)
    torch.testing.assert_close(
        out, F.conv2d(x, layer.weight[0], layer.bias[0], padding=1), rtol=1e-12, atol=1e-12
    )
    out.sum().backward()
    assert layer.weight.grad is not None
    assert all(p.grad is None for p in layer.mixing.parameters())
    sigmoid = DynamicConv2d(4, 6, num_kernels=1, gate="sigmoid").double()
    a = torch.sigmoid(sigmoid.mixing.proj(x.mean(dim=(2, 3))))  # not constant: kept
    torch.testing.assert_close(
        sigmoid(x), a[:, :, None, None] * F.conv2d(x, sigmoid.weight[0], padding=1)
    )


def test_cpu_channels_last_inputs_take_the_nhwc_method():
    from tinyvision.ops.dynamic_conv import choose_method

    assert choose_method("cpu", 64, 16 * 16, channels_last=True) == "nhwc"
    assert choose_method("cpu", 3, 32 * 32, channels_last=True) == "nhwc"
    assert choose_method("cpu", 128, 8 * 8, channels_last=True) == "sum"
    assert choose_method("cpu", 64, 16 * 16) == "grouped"  # channels-first: as measured before


@pytest.mark.parametrize("impl", ["naive", "fast"])
def test_channels_last_input(impl):
    torch.manual_seed(0)
    layer = DynamicConv2d(8, 16, num_kernels=3, impl=impl)
    x = torch.randn(2, 8, 6, 6)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = layer(x_cl)
    torch.testing.assert_close(out, layer(x), rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    out.sum().backward()
    assert x_cl.grad is not None and x_cl.grad.shape == x.shape


def test_bf16_autocast_on_cpu_matches_float32():
    torch.manual_seed(0)
    layer = DynamicConv2d(8, 16, num_kernels=4, bias=True)
    x = torch.randn(4, 8, 8, 8, requires_grad=True)
    reference = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)
    out.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


def test_input_that_needs_no_gradient():
    # The stem's input is the image: the fast path then skips dX.
    layer = DynamicConv2d(3, 4, num_kernels=2)
    layer(torch.randn(2, 3, 5, 5)).sum().backward()
    assert all(p.grad is not None for p in layer.parameters())


def test_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="do not fit"):
        dynamic_conv2d(torch.randn(2, 3, 5, 5), torch.randn(2, 4), torch.randn(3, 4, 3, 3, 3))


# -- the brief's block -------------------------------------------------------------------------


def test_minimum_block_has_the_briefs_parameters():
    """W is d x K (nn.Linear stores W^T); K kernels of shape d' x d x k x k; nothing else."""
    layer = DynamicConv2d(16, 32, num_kernels=4, kernel_size=3)
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert shapes == {"mixing.proj.weight": (4, 16), "weight": (4, 32, 16, 3, 3)}


def test_block_computes_the_briefs_formula():
    torch.manual_seed(0)
    layer = DynamicConv2d(5, 7, num_kernels=3, kernel_size=3).to(DOUBLE)
    x = torch.randn(2, 5, 6, 6, dtype=DOUBLE)
    w = layer.mixing.proj.weight.T  # d x K
    a = torch.softmax(x.mean(dim=(2, 3)) @ w, dim=1)  # a = g(SpatialAveragePool(X) W)
    expected = sum(
        a[:, k, None, None, None] * F.conv2d(x, layer.weight[k], padding=1) for k in range(3)
    )
    for impl in ("naive", "fast"):
        layer.impl = impl
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_softmax_mixing_sums_to_one_and_temperature_sharpens():
    torch.manual_seed(0)
    layer = DynamicConv2d(8, 8, num_kernels=4)
    torch.nn.init.normal_(layer.mixing.proj.weight, std=3.0)
    x = torch.randn(6, 8, 5, 5)
    a = layer.mixing(x)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(6))
    assert (a >= 0).all()
    peaks = []
    for temperature in (0.1, 1.0, 10.0, 1000.0):
        layer.set_temperature(temperature)
        a = layer.mixing(x)
        torch.testing.assert_close(a.sum(dim=1), torch.ones(6))
        peaks.append(a.max(dim=1).values.mean().item())
    assert peaks == sorted(peaks, reverse=True)  # higher T: flatter mixing
    assert peaks[0] > 0.9 and peaks[-1] < 0.26  # T -> 0: one kernel; T -> inf: uniform 1/K


@pytest.mark.parametrize("gate", ["sigmoid", "relu", "identity"])
def test_other_gates(gate):
    layer = DynamicConv2d(4, 4, num_kernels=3, gate=gate)
    a = layer.mixing(torch.randn(2, 4, 5, 5))
    assert a.shape == (2, 3)
    if gate == "sigmoid":
        assert ((a > 0) & (a < 1)).all()
    if gate == "relu":
        assert (a >= 0).all()


def test_mixing_mlp_with_reduction():
    layer = DynamicConv2d(32, 8, num_kernels=4, gate_reduction=4)
    assert layer.mixing.proj[0].weight.shape == (8, 32) and layer.mixing.proj[2].weight.shape == (
        4,
        8,
    )
    assert layer(torch.randn(2, 32, 5, 5)).shape == (2, 8, 5, 5)


# -- the network -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dynconv_brief", "dynconv"])
@pytest.mark.parametrize(("image", "features"), [((1, 28, 28), 7), ((3, 32, 32), 8)])
def test_output_shapes_for_fashion_mnist_and_cifar(name, image, features):
    model = build(name, image)
    model.eval()
    x = torch.randn(2, *image)
    # dynconv_brief pools twice (32 -> 8, 28 -> 7); dynconv three times (32 -> 4, 28 -> 3).
    size = features if name == "dynconv_brief" else features // 2
    width = model_config(name).widths[-1]
    assert model.forward_features(x).shape == (2, width, size, size)
    assert model(x).shape == (2, 10)


def test_minimum_network_is_all_dynamic_convs_without_extras():
    model = build("dynconv_brief")
    convs = model.dynamic_convs()
    assert len(convs) == 1 + len(model_config("dynconv_brief").widths)  # stem + one per stage
    assert not any(isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d)) for m in model.modules())
    for name, _ in model.named_parameters():
        if name.startswith("head"):
            continue  # softmax regression: linear with bias
        assert name.endswith(("mixing.proj.weight", "conv.weight")), name


@pytest.mark.parametrize("name", ["dynconv_brief", "dynconv"])
def test_network_naive_and_fast_give_the_same_outputs(name):
    torch.manual_seed(0)
    naive = small(name, impl="naive").to(DOUBLE).eval()
    fast = small(name, impl="fast").to(DOUBLE).eval()
    fast.load_state_dict(naive.state_dict())
    x = torch.randn(3, 3, 32, 32, dtype=DOUBLE)
    torch.testing.assert_close(fast(x), naive(x), rtol=1e-10, atol=1e-12)


def test_set_temperature_reaches_every_dynamic_conv():
    model = small("dynconv", skip=True, depths=3, gate_reduction=2)
    convs = model.dynamic_convs()
    assert len(convs) == 1 + 3 * 3
    model.set_temperature(7.5)
    assert all(conv.mixing.temperature.item() == 7.5 for conv in convs)
    assert "stem.conv.mixing.temperature" in model.state_dict()  # saved with checkpoints


def test_extras_skip_stride_avgpool_plain_stem_mlp_head():
    model = small(
        skip=True,
        depths=[1, 3, 2],
        downsample="stride",
        stem="plain",
        head_hidden=12,
        conv_bias=True,
        gate_bias=True,
        dropout=0.1,
        norm="batch",
    )
    assert isinstance(model.stem[0], torch.nn.Conv2d)
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 8, 4, 4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    pooled = small(downsample="avgpool")
    assert pooled(torch.randn(2, 1 * 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["dynconv_brief", "dynconv"])
def test_fast_model_trains(name):
    torch.manual_seed(0)
    model = build(name, (3, 16, 16), stem_width=8, widths=[8, 16, 16], impl="fast")
    x, y = torch.randn(16, 3, 16, 16), torch.arange(16) % 10
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(b < a for a, b in itertools.pairwise(losses)), (
        losses
    )  # a fixed batch: down each step
    assert losses[-1] < 0.9 * losses[0], losses


def test_bad_configs_are_reported():
    with pytest.raises(ConfigError, match="kernel_size must be odd"):
        model_config("dynconv", kernel_size=4)
    with pytest.raises(ConfigError, match="depths has 2 entries but there are 3 stages"):
        model_config("dynconv", depths=[1, 2])
    with pytest.raises(ConfigError, match="too small"):
        build("dynconv", (3, 4, 4), strides=[2, 2, 2])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("cifar10-dynconv*.toml")))
def test_configs_load_and_build(path):
    config = load_config(path)
    assert config.model_name.startswith("dynconv")
    for image in ((3, 32, 32), (1, 28, 28)):
        model = build(config.model_name, image, **config.model_params)
        assert model(torch.randn(2, *image)).shape == (2, 10)
