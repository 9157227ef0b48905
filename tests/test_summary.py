"""Model summary: totals, MACs closed forms, mode restoring, brief D's answers, the CLI text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tinyvision.errors import ConfigError
from tinyvision.models import create_model
from tinyvision.models.densenet import dense_block_answers
from tinyvision.models.dynconv import DynamicConv2d
from tinyvision.summary import summarize, summary_text

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def row(summary, name: str):
    return next(r for r in summary.rows if r.name == name)


@pytest.mark.parametrize("name", ["resmlp_brief", "densenet_brief", "densenet"])
def test_totals_equal_parameter_sums(name: str) -> None:
    model = create_model(name, in_chans=3, num_classes=10, image_size=(32, 32))
    summary = summarize(model, (3, 32, 32))
    total = sum(p.numel() for p in model.parameters())
    assert summary.total_params == summary.trainable_params == total
    assert sum(r.params for r in summary.rows) == total
    assert summary.output_shape == (10,)
    for depth in range(5):  # folded rows still add up to the totals
        summary.depth = depth
        visible = summary.visible_rows()
        assert sum(params for _, params, _ in visible) == total
        assert sum(macs for _, _, macs in visible) == summary.total_macs


def test_trainable_excludes_frozen() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model[0].requires_grad_(False)
    summary = summarize(model, (1, 1, 4))
    assert summary.total_params == 15 + 8 and summary.trainable_params == 8
    assert "frozen" in summary.to_text()


def test_linear_macs() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Linear(7, 5, bias=False))
    summary = summarize(model, (3, 2, 2))
    assert row(summary, "1").macs == 12 * 7 and row(summary, "2").macs == 7 * 5
    assert summary.total_macs == 12 * 7 + 7 * 5
    # A Linear on a sequence counts once per token.
    tokens = summarize(nn.Linear(6, 9), (1, 5, 6))
    assert tokens.total_macs == 5 * 6 * 9


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "padding", "groups"),
    [(3, 8, 3, 1, 1, 1), (4, 8, 3, 2, 0, 2), (6, 6, 5, 1, 2, 6), (2, 4, 1, 1, 0, 1)],
)
def test_conv2d_macs(cin, cout, kernel, stride, padding, groups) -> None:
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups)
    h, w = 11, 9
    out_h = (h + 2 * padding - kernel) // stride + 1
    out_w = (w + 2 * padding - kernel) // stride + 1
    summary = summarize(conv, (cin, h, w))
    assert summary.output_shape == (cout, out_h, out_w)
    assert summary.total_macs == out_h * out_w * cout * (cin // groups) * kernel * kernel


def test_conv_transpose_and_norm_macs() -> None:
    deconv = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)
    assert summarize(deconv, (4, 5, 5)).total_macs == 5 * 5 * 4 * (6 // 2) * 3 * 3
    assert summarize(nn.BatchNorm2d(3), (3, 4, 4)).total_macs == 3 * 4 * 4  # negligible
    assert summarize(nn.ReLU(), (3, 4, 4)).total_macs == 0


def test_module_macs_method_is_used() -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) * 2

        def macs(self, input: torch.Tensor, output: torch.Tensor) -> int:
            return 1000 + input.shape[-1]  # its own work; children count themselves

    summary = summarize(Custom(), (1, 1, 4))
    assert row(summary, "").macs == 1004
    assert summary.total_macs == 1004 + 16


def test_modes_are_restored() -> None:
    model = create_model("densenet_brief", in_chans=1, num_classes=10, image_size=(28, 28))
    model.train()
    model.features.block2.eval()  # a mixed state must survive as it was
    before = {name: m.training for name, m in model.named_modules()}
    stats = model.features.block1.layer1.norm.running_mean.clone()
    summarize(model, (1, 28, 28))
    assert {name: m.training for name, m in model.named_modules()} == before
    assert torch.equal(model.features.block1.layer1.norm.running_mean, stats)  # eval pass
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed


def test_densenet_rows_show_shapes() -> None:
    model = create_model("densenet_brief", in_chans=1, num_classes=10, image_size=(28, 28))
    summary = summarize(model, (1, 28, 28))
    assert row(summary, "features.block1").output_shape == (40, 14, 14)
    assert row(summary, "features.block2.layer3").output_shape == (12, 7, 7)
    assert row(summary, "stem.conv").macs == 28 * 28 * 4 * 1 * 9


@pytest.mark.parametrize("num_kernels", [1, 2, 4])
def test_dynamic_conv_macs(num_kernels: int) -> None:
    # Brief B's layer: the per-image kernel mix plus one convolution, and the gate's linear map
    # (d -> K) on its own row; one kernel is a plain convolution (no mix, no gate is run).
    layer = DynamicConv2d(3, 8, num_kernels=num_kernels, stride=2)
    summary = summarize(layer, (3, 10, 10))
    conv = 5 * 5 * 8 * 3 * 9
    mix = num_kernels * 8 * 3 * 9 if num_kernels > 1 else 0
    gate = 3 * num_kernels if num_kernels > 1 else 0
    assert row(summary, "").macs == conv + mix
    assert summary.total_macs == conv + mix + gate


@pytest.mark.parametrize("k", [4, 12, 32])
def test_dense_block_answers_function(k: int) -> None:
    model = create_model(
        "densenet_brief", in_chans=1, num_classes=10, image_size=(28, 28), growth_rate=k
    )
    answers = dense_block_answers(model, (1, 28, 28))
    assert [(b.spatial, b.in_channels, b.out_channels) for b in answers.blocks] == [
        ((14, 14), 4, 4 + 3 * k),
        ((7, 7), 4, 4 + 3 * k),
    ]
    assert answers.fc_in_features == 4 + 3 * k
    with pytest.raises(ValueError, match="no DenseBlock"):
        dense_block_answers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), (1, 2, 2))


def test_summary_text_for_a_variant_name() -> None:
    text = summary_text("densenet_brief")
    assert "fashion-mnist: 1x28x28" in text
    assert "Total params:         11,246" in text
    assert "Dense block 1 runs at 14x14" in text and "4 input channels and 40 output" in text
    assert "Dense block 2 runs at 7x7" in text
    assert "final fully connected layer takes 40 input features" in text
    wide = summary_text("densenet_brief", "cifar10", ["model.growth_rate=32"])
    assert "cifar10: 3x32x32" in wide and "Dense block 1 runs at 16x16" in wide
    assert "takes 100 input features" in wide
    assert "Dense block" not in summary_text("resmlp_brief")


def test_summary_text_for_config_paths(tmp_path: Path) -> None:
    text = summary_text(str(CONFIGS / "fmnist-densenet-brief.toml"))
    assert "densenet_brief (DenseNet)" in text and "takes 40 input features" in text
    for name in ("fmnist-resmlp-brief", "fmnist-resmlp", "fmnist-densenet"):
        assert "Total params" in summary_text(str(CONFIGS / f"{name}.toml"))
    config = tmp_path / "c.toml"
    config.write_text('[data]\ndataset = "cifar10"\n[model]\nname = "densenet_brief"\n')
    assert "Dense block 1 runs at 16x16" in summary_text(str(config))  # the config's data set
    assert "Dense block 1 runs at 14x14" in summary_text(str(config), "fashion-mnist")


def test_summary_text_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        summary_text("densenet_brieff")
    with pytest.raises(ConfigError, match="dataset"):
        summary_text("densenet_brief", "mnist")
