import pytest
import torch

from tinyvision.errors import ConfigError
from tinyvision.models import create_model, model_config


def build(name="mixer", image=(1, 28, 28), **overrides):
    return create_model(name, in_chans=image[0], num_classes=10, image_size=image[1:], **overrides)


@pytest.mark.parametrize("patch", [1, 2, 4, 7, 14, 28])
@pytest.mark.parametrize("dim", [8, 24])
def test_output_shape_for_patch_sizes_and_widths(patch, dim):
    model = build(patch_size=patch, dim=dim, depth=2, token_hidden=8, channel_hidden=16)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model.forward_features(torch.randn(3, 1, 28, 28)).shape == (3, (28 // patch) ** 2, dim)


def test_colour_images_and_per_block_widths():
    model = build(
        image=(3, 32, 32),
        patch_size=4,
        dim=16,
        depth=3,
        token_hidden=[8, 16, 32],
        channel_hidden=[16, 32, 64],
        block_dims=[16, 24, 12],
    )
    features = model.forward_features(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 64, 12)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_minimum_spec_has_exactly_the_formulas_parameters():
    """mixer_brief: W_1 (N_p x h_1), W_2 (h_1 x N_p), W_3 (d x h_2), W_4 (h_2 x d_o), no bias."""
    cfg = model_config("mixer_brief")
    n_p, k = (28 // cfg.patch_size) ** 2, cfg.patch_size
    model = build("mixer_brief")
    expected = {"stem.proj.weight": (cfg.dim, k * k)}  # f: K*K*C -> d, linear
    for i in range(cfg.depth):
        # nn.Linear stores W^T: weight[out, in]
        expected[f"blocks.{i}.token_mixing.mlp.fc1.weight"] = (cfg.token_hidden, n_p)
        expected[f"blocks.{i}.token_mixing.mlp.fc2.weight"] = (n_p, cfg.token_hidden)
        expected[f"blocks.{i}.channel_mixing.mlp.fc1.weight"] = (cfg.channel_hidden, cfg.dim)
        expected[f"blocks.{i}.channel_mixing.mlp.fc2.weight"] = (cfg.dim, cfg.channel_hidden)
    expected |= {"head.weight": (10, cfg.dim), "head.bias": (10,)}  # softmax regression
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == expected


def test_minimum_spec_computes_the_briefs_formulas():
    torch.manual_seed(0)
    model = build(
        "mixer_brief", patch_size=7, dim=6, depth=2, token_hidden=5, channel_hidden=4
    ).double()
    images = torch.randn(2, 1, 28, 28, dtype=torch.double)
    g = torch.nn.functional.gelu
    # Patches in row-major order, each flattened: X = patches W_f.
    patches = images.unfold(2, 7, 7).unfold(3, 7, 7).reshape(2, 16, 49)
    x = patches @ model.stem.proj.weight.T
    for block in model.blocks:
        tm, cm = block.token_mixing.mlp, block.channel_mixing.mlp
        w1, w2 = tm.fc1.weight.T, tm.fc2.weight.T  # N_p x h_1, h_1 x N_p
        o1 = (g(x.transpose(1, 2) @ w1) @ w2).transpose(1, 2)
        w3, w4 = cm.fc1.weight.T, cm.fc2.weight.T  # d x h_2, h_2 x d_o
        x = g(o1 @ w3) @ w4
    logits = x.mean(1) @ model.head.weight.T + model.head.bias
    torch.testing.assert_close(model(images), logits, rtol=1e-12, atol=1e-12)


def test_skip_connections_are_an_extra_around_the_same_mlps():
    plain = build("mixer_brief", dim=8, token_hidden=4, channel_hidden=8)
    skip = build("mixer_brief", dim=8, token_hidden=4, channel_hidden=8, skip=True)
    assert [p.shape for p in plain.parameters()] == [p.shape for p in skip.parameters()]
    skip.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 28, 28)
    assert not torch.allclose(plain(x), skip(x))


def test_skip_across_a_width_change_uses_a_projection():
    model = build(dim=8, depth=2, token_hidden=4, channel_hidden=8, block_dims=[12, 12])
    assert model.blocks[0].shortcut.weight.shape == (12, 8)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_mlp_stem_and_mlp_head():
    model = build(dim=8, depth=1, token_hidden=4, channel_hidden=8, stem_hidden=20, head_hidden=30)
    assert model.stem.proj.fc1.weight.shape == (20, 16)
    assert model.head.fc1.weight.shape == (30, 8)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_patch_size_must_divide_the_image():
    with pytest.raises(ConfigError, match="patch_size 5 does not divide the 28x28 image"):
        build(patch_size=5)


def test_dropout_differs_between_train_and_eval():
    model = build(dim=8, depth=1, token_hidden=4, channel_hidden=8, dropout=0.5)
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
