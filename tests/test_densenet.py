"""DenseNet (brief D): the brief's network, dense connectivity, parameter counts, the answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tinyvision.errors import ConfigError
from tinyvision.models import create_model, model_config
from tinyvision.models.densenet import DenseBlock, DenseLayer, DenseNet, Transition


def build(
    in_chans: int = 1, image_size: tuple[int, int] = (28, 28), name: str = "densenet_brief", **kw
) -> DenseNet:
    return create_model(name, in_chans=in_chans, num_classes=10, image_size=image_size, **kw)


def hand_param_count(in_chans: int, k: int, classes: int = 10) -> int:
    """The brief's network, counted from the layer formulas (convolutions have no bias).

    stem 3x3 conv: in*4*9. Dense layer on c channels: BN 2c + 3x3 conv c*k*9.
    Transition on c channels: BN 2c + 1x1 conv c*4. FC on c features: c*classes + classes.
    """
    stem = in_chans * 4 * 9
    block = sum(2 * (4 + i * k) + (4 + i * k) * k * 9 for i in range(3))
    c_out = 4 + 3 * k
    transition = 2 * c_out + c_out * 4
    head = c_out * classes + classes
    return stem + block + transition + block + head


def test_default_is_the_brief_network() -> None:
    model = build()
    assert sum(p.numel() for p in model.parameters()) == 11_246  # k=12, by hand below
    assert hand_param_count(1, 12) == 11_246
    # Stem: 3x3 conv, padding 1, to 4 channels; 2x2 average pool, stride 2, no padding.
    conv, pool = model.stem.conv, model.stem.pool
    assert (conv.out_channels, conv.kernel_size, conv.padding) == (4, (3, 3), (1, 1))
    assert isinstance(pool, nn.AvgPool2d)
    assert (pool.kernel_size, pool.stride, pool.padding) == (2, 2, 0)
    # Two dense blocks of 3 layers with one transition back to 4 channels between them.
    kinds = [type(m) for m in model.features]
    assert kinds == [DenseBlock, Transition, DenseBlock]
    assert [b.num_layers for b in model.features if isinstance(b, DenseBlock)] == [3, 3]
    assert model.features.transition1.conv.out_channels == 4
    # Extras off: no final norm, no bottleneck, no dropout.
    assert isinstance(model.norm, nn.Identity)
    assert all(
        isinstance(layer.bottleneck, nn.Identity)
        for layer in model.modules()
        if isinstance(layer, DenseLayer)
    )
    assert all(m.p == 0 for m in model.modules() if isinstance(m, nn.Dropout))
    assert model.head.in_features == 4 + 3 * 12


@pytest.mark.parametrize("k", [4, 12, 32])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_param_count_by_hand(k: int, in_chans: int) -> None:
    model = build(in_chans, growth_rate=k)
    assert sum(p.numel() for p in model.parameters()) == hand_param_count(in_chans, k)


def test_dense_layer_is_bn_relu_conv3x3() -> None:
    layer = DenseLayer(10, 6)
    assert isinstance(layer.norm, nn.BatchNorm2d) and layer.norm.num_features == 10
    assert isinstance(layer.act, nn.ReLU)
    conv = layer.conv
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (
        10,
        6,
        (3, 3),
        (1, 1),
    )
    assert layer(torch.randn(2, 10, 9, 7)).shape == (2, 6, 9, 7)  # spatial size preserved


@pytest.mark.parametrize("k", [4, 12, 32])
def test_dense_connectivity(k: int) -> None:
    c0 = 5
    block = DenseBlock(c0, 4, k)
    # Layer i receives [x_0, ..., x_{i-1}]: c0 + i*k channels.
    assert [layer.conv.in_channels for layer in block.layers] == [c0 + i * k for i in range(4)]
    x = torch.randn(2, c0, 6, 6)
    block.eval()
    out = block(x)
    assert out.shape == (2, c0 + 4 * k, 6, 6) and block.out_channels == c0 + 4 * k
    torch.testing.assert_close(out[:, :c0], x)  # the block input is passed through unchanged
    # The output is [x_0, x_1, ..., x_L]: recompute each x_l from the earlier slices.
    for i, layer in enumerate(block.layers):
        start = c0 + i * k
        torch.testing.assert_close(out[:, start : start + k], layer(out[:, :start]))


def test_transition_is_bn_conv1x1_avgpool() -> None:
    transition = Transition(40, 4)
    norm, conv, pool = transition
    assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == 40
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (40, 4, (1, 1))
    assert isinstance(pool, nn.AvgPool2d) and (pool.kernel_size, pool.stride) == (2, 2)
    assert transition(torch.randn(1, 40, 14, 14)).shape == (1, 4, 7, 7)
    assert transition(torch.randn(1, 40, 7, 7)).shape == (1, 4, 3, 3)  # odd sizes floor


@pytest.mark.parametrize("k", [4, 12, 32])
@pytest.mark.parametrize("size", [28, 32, 29])
def test_answers_match_the_closed_form(k: int, size: int) -> None:
    answers = build(1, (size, size), growth_rate=k).shape_answers()
    block1, block2 = answers.blocks
    assert block1.spatial == (size // 2, size // 2)
    assert block2.spatial == (size // 2 // 2, size // 2 // 2)
    assert (block1.in_channels, block1.out_channels) == (4, 4 + 3 * k)
    assert (block2.in_channels, block2.out_channels) == (4, 4 + 3 * k)
    assert answers.fc_in_features == 4 + 3 * k
    if size == 28:  # the brief's own numbers
        assert (block1.spatial, block2.spatial) == ((14, 14), (7, 7))


def test_answers_for_a_deeper_config() -> None:
    model = build(
        3,
        (32, 32),
        growth_rate=8,
        stem_channels=16,
        block_layers=[2, 4, 3],
        transition_channels=[10, 12],
    )
    answers = model.shape_answers()
    assert [(b.spatial, b.in_channels, b.out_channels) for b in answers.blocks] == [
        ((16, 16), 16, 32),
        ((8, 8), 10, 42),
        ((4, 4), 12, 36),
    ]
    assert answers.fc_in_features == 36
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("in_chans", "image_size"), [(1, (28, 28)), (3, (32, 32)), (3, (29, 29)), (1, (17, 23))]
)
def test_any_in_chans_and_image_size(in_chans: int, image_size: tuple[int, int]) -> None:
    model = build(in_chans, image_size)
    assert model(torch.randn(2, in_chans, *image_size)).shape == (2, 10)


def test_image_too_small_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="too small"):
        build(1, (3, 3))
    smallest = build(1, (4, 4)).eval()  # eval: batch norm on a 1x1 map needs running stats
    assert smallest(torch.randn(1, 1, 4, 4)).shape == (1, 10)


def test_train_and_eval_differ() -> None:
    torch.manual_seed(0)
    model = build(dropout=0.5)
    x = torch.randn(8, 1, 28, 28)
    bn = model.features.block1.layer1.norm
    model.train()
    before = bn.running_mean.clone()
    assert not torch.equal(model(x), model(x))  # dropout
    assert not torch.equal(bn.running_mean, before)  # batch norm updates its statistics
    model.eval()
    frozen = bn.running_mean.clone()
    torch.testing.assert_close(model(x), model(x))
    assert torch.equal(bn.running_mean, frozen)
    torch.testing.assert_close(model(x[:1]), model(x)[:1])  # eval: each image on its own


def test_extras() -> None:
    model = build(bottleneck=4, final_norm=True, compression=0.5, growth_rate=8)
    layer = model.features.block1.layer2
    assert layer.bottleneck[2].out_channels == 4 * 8  # 1x1 conv to bottleneck*k
    assert layer.conv.in_channels == 4 * 8 and layer.conv.out_channels == 8
    assert model.features.transition1.conv.out_channels == (4 + 3 * 8) // 2
    assert isinstance(model.norm[0], nn.BatchNorm2d)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    no_pool = build(stem_pool=False)
    assert no_pool.shape_answers().blocks[0].spatial == (28, 28)


def test_variants() -> None:
    wide = model_config("densenet")
    assert wide.block_layers == [3, 3] and wide.growth_rate > 12
    large = build(image_size=(8, 8), name="densenet_l")  # small images keep the test fast
    assert len(large.shape_answers().blocks) == 3
    assert large.eval()(torch.randn(1, 1, 8, 8)).shape == (1, 10)


def test_transition_list_must_match_blocks() -> None:
    with pytest.raises(ConfigError, match="transition_channels has 2 entries"):
        model_config("densenet_brief", transition_channels=[4, 4])
