"""Residual MLP (brief C): shapes, the closed-form parameter count, the plain design, options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tinyvision.errors import ConfigError
from tinyvision.models import create_model, get_variant, model_config
from tinyvision.models.resmlp import ResidualBlock, ResMLP


def build(in_chans: int = 1, image_size: tuple[int, int] = (28, 28), **overrides) -> ResMLP:
    name = overrides.pop("name", "resmlp_brief")
    return create_model(name, in_chans=in_chans, num_classes=10, image_size=image_size, **overrides)


def closed_form_params(
    in_features: int, width: int, hiddens: list[int], classes: int, *, norms: int = 0
) -> int:
    """stem D*w + w; block w*h + h + h*w + w; head w*C + C; each LayerNorm 2w."""
    stem = in_features * width + width
    blocks = sum(width * h + h + h * width + width for h in hiddens)
    head = width * classes + classes
    return stem + blocks + head + norms * 2 * width


@pytest.mark.parametrize(
    ("in_chans", "image_size", "width", "depth", "hidden"),
    [(1, (28, 28), 256, 2, 256), (3, (32, 32), 64, 3, 128), (1, (29, 31), 32, 1, 16)],
)
def test_param_count_matches_closed_form(in_chans, image_size, width, depth, hidden) -> None:
    model = build(in_chans, image_size, width=width, depth=depth, hidden=hidden)
    in_features = in_chans * image_size[0] * image_size[1]
    expected = closed_form_params(in_features, width, [hidden] * depth, 10)
    assert sum(p.numel() for p in model.parameters()) == expected
    out = model(torch.randn(4, in_chans, *image_size))
    assert out.shape == (4, 10)


def test_brief_variant_is_plain_and_counts() -> None:
    model = build()
    assert sum(p.numel() for p in model.parameters()) == closed_form_params(784, 256, [256] * 2, 10)
    assert len(model.blocks) == 2
    # No extras: no norms, no dropout anywhere.
    assert not any(isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)) for m in model.modules())
    assert all(m.p == 0 for m in model.modules() if isinstance(m, nn.Dropout))


def test_plain_block_is_he_2015s_block() -> None:
    """He et al. 2015, Figure 2: y = relu(x + F(x)), the ReLU after the addition."""
    torch.manual_seed(0)
    block = ResidualBlock(16, 32)
    x = torch.randn(5, 16)
    expected = torch.relu(x + block.fc2(torch.relu(block.fc1(x))))  # g(x + FC2(g(FC1(x))))
    torch.testing.assert_close(block(x), expected)
    assert isinstance(block.shortcut, nn.Identity)  # He et al.'s identity shortcut


def test_identity_mapping_block_is_he_2016s_block() -> None:
    """post_activation=False: y = x + F(x), nothing after the addition (He et al. 2016)."""
    torch.manual_seed(0)
    block = ResidualBlock(16, 32, post_activation=False)
    x = torch.randn(5, 16)
    torch.testing.assert_close(block(x), x + block.fc2(torch.relu(block.fc1(x))))
    assert (block(x) < 0).any()  # no ReLU on the output


def test_brief_variant_uses_the_2015_block_and_the_recipe_the_2016_one() -> None:
    brief, recipe = build(), build(name="resmlp")
    x = torch.randn(7, 1, 28, 28)
    assert (brief.blocks(brief.stem(x)) >= 0).all()  # every block ends in the ReLU
    assert all(isinstance(b.post_act, nn.ReLU) for b in brief.blocks)
    assert all(isinstance(b.post_act, nn.Identity) for b in recipe.blocks)


def test_block_widths_are_user_parameters() -> None:
    block = ResidualBlock(16, 48, 24)  # FC1 -> 48, FC2 -> 24: projection shortcut
    assert block.fc1.out_features == 48 and block.fc2.out_features == 24
    assert isinstance(block.shortcut, nn.Linear)
    assert block(torch.randn(3, 16)).shape == (3, 24)

    model = build(width=32, depth=3, hidden=[8, 16, 24], block_widths=[32, 40, 40])
    assert [b.fc1.out_features for b in model.blocks] == [8, 16, 24]
    assert [b.fc2.out_features for b in model.blocks] == [32, 40, 40]
    assert model.head.in_features == 40
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_layer_norm_adds_two_w_per_norm() -> None:
    model = build(width=64, depth=3, hidden=32, norm="layer")
    expected = closed_form_params(784, 64, [32] * 3, 10, norms=3 + 1)  # per block + before head
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("in_chans", [1, 3])
def test_any_in_chans(in_chans: int) -> None:
    model = build(in_chans, (32, 32), name="resmlp", width=64, hidden=64)
    assert model.stem[1].in_features == in_chans * 32 * 32
    assert model(torch.randn(2, in_chans, 32, 32)).shape == (2, 10)


def test_train_and_eval_differ_with_dropout_and_batch_norm() -> None:
    torch.manual_seed(0)
    model = build(width=32, depth=2, hidden=32, norm="batch", dropout=0.5)
    x = torch.randn(8, 1, 28, 28)
    model.train()
    bn = model.blocks[0].norm
    before = bn.running_mean.clone()
    assert not torch.equal(model(x), model(x))  # dropout masks differ
    assert not torch.equal(bn.running_mean, before)  # batch statistics update
    model.eval()
    frozen = bn.running_mean.clone()
    torch.testing.assert_close(model(x), model(x))
    assert torch.equal(bn.running_mean, frozen)
    torch.testing.assert_close(model(x[:1]), model(x)[:1])  # eval: no batch dependence


def test_drop_path_only_in_training() -> None:
    model = build(width=16, depth=4, hidden=16, drop_path=0.3)
    rates = [b.drop_path.prob for b in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)  # linear over blocks
    model.eval()
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(model(x), model(x))


def test_gradients_reach_the_stem() -> None:
    model = build(width=32, depth=2, hidden=32)
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    assert model.stem[1].weight.grad is not None
    assert model.stem[1].weight.grad.abs().sum() > 0


def test_tuned_variant_has_extras() -> None:
    cfg = model_config("resmlp")
    assert cfg.norm in ("layer", "batch") and 0.1 <= cfg.dropout <= 0.2
    assert get_variant("resmlp").family is ResMLP


def test_per_block_list_must_match_depth() -> None:
    with pytest.raises(ConfigError, match="hidden has 3 entries but depth is 2"):
        model_config("resmlp_brief", hidden=[8, 8, 8])
