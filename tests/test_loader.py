"""The device-resident loader: batching, normalisation, augmentation and determinism."""

from __future__ import annotations

import time

import pytest
import torch

from tinyvision.data import Augment, DeviceLoader


def images_and_labels(n=50, c=1, h=8, w=8, seed=0):
    """Random images with no zero pixel (so zero padding is recognisable), label = index."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    return images, torch.arange(n)


def loader(images, labels, *, seed=0, batch_size=16, shuffle=False, drop_last=False, **kwargs):
    kwargs.setdefault("mean", (0.0,) * images.shape[1])
    kwargs.setdefault("std", (1.0,) * images.shape[1])
    return DeviceLoader(
        images,
        labels,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Undo mean 0, std 1 normalisation: back to uint8 values."""
    return (x * 255).round().to(torch.uint8)


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` translated by (dy, dx) pixels, zero fill: out[i, j] = image[i + dy, j + dx]."""
    h, w = image.shape[-2:]
    out = torch.zeros_like(image)
    out[:, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)] = image[
        :, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)
    ]
    return out


def test_shapes_dtypes_and_normalisation():
    images, labels = images_and_labels(c=3)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    batches = list(loader(images, labels, mean=mean, std=std))
    x, y = batches[0]
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    expected = (images[:16].float() / 255 - m) / s
    torch.testing.assert_close(x, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(torch.cat([y for _, y in batches]), labels)  # no shuffle: in order


def test_len_and_drop_last():
    images, labels = images_and_labels(n=50)
    kept = loader(images, labels, drop_last=True)
    assert len(kept) == 3 and [len(y) for _, y in kept] == [16, 16, 16]
    full = loader(images, labels, drop_last=False)
    assert len(full) == 4 and [len(y) for _, y in full] == [16, 16, 16, 2]
    assert len(loader(images, labels, batch_size=50, drop_last=True)) == 1
    assert len(loader(images, labels, batch_size=64, drop_last=True)) == 0


@pytest.mark.parametrize("drop_last", [False, True])
def test_shuffle_visits_every_image_once(drop_last):
    images, labels = images_and_labels(n=50)
    data = loader(images, labels, shuffle=True, drop_last=drop_last)
    epochs = [torch.cat([y for _, y in data]) for _ in range(2)]
    for seen in epochs:
        assert len(seen) == (48 if drop_last else 50)
        assert len(set(seen.tolist())) == len(seen)  # never twice
        if not drop_last:
            assert torch.equal(seen.sort().values, labels)
    assert not torch.equal(epochs[0], labels[: len(epochs[0])])  # shuffled
    assert not torch.equal(epochs[0], epochs[1])  # a new order each epoch


def test_images_and_labels_stay_paired():
    images, labels = images_and_labels(n=50)
    for x, y in loader(images, labels, shuffle=True):
        assert torch.equal(pixels(x), images[y])


FULL = Augment(crop_padding=2, flip=True, erasing=0.5, mixup_alpha=0.4, cutmix_alpha=1.0)


@pytest.mark.parametrize("augment", [None, Augment(crop_padding=2, flip=True, erasing=0.5), FULL])
def test_same_generator_state_same_batches(augment):
    images, labels = images_and_labels(c=3)

    def epoch(data):
        return [(x.clone(), y.clone()) for x, y in data]

    a = loader(images, labels, seed=7, shuffle=True, augment=augment, num_classes=50)
    b = loader(images, labels, seed=7, shuffle=True, augment=augment, num_classes=50)
    state = a.generator.get_state()
    first = epoch(a)
    for (xa, ya), (xb, yb) in zip(first, epoch(b), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.generator.set_state(state)  # exact resume: the same state replays the same epoch
    for (xa, ya), (xr, yr) in zip(first, epoch(a), strict=True):
        assert torch.equal(xa, xr) and torch.equal(ya, yr)
    second = epoch(a)
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, second, strict=True))
    # Resuming in the middle of an epoch gives its remaining batches.
    a.generator.set_state(state)
    for (xa, ya), (xr, yr) in zip(first[2:], a.epoch(start=2), strict=True):
        assert torch.equal(xa, xr) and torch.equal(ya, yr)


def test_default_generator_is_seeded():
    images, labels = images_and_labels()
    make = lambda: DeviceLoader(  # noqa: E731
        images, labels, batch_size=16, mean=(0.5,), std=(0.5,), shuffle=True, drop_last=False
    )
    assert all(torch.equal(a[1], b[1]) for a, b in zip(make(), make(), strict=True))


def test_crop_translates_with_zero_fill():
    images, labels = images_and_labels(n=200, c=3)
    p, offsets = 2, set()
    for x, y in loader(images, labels, augment=Augment(crop_padding=p)):
        for out, i in zip(pixels(x), y.tolist(), strict=True):
            matches = [
                (dy, dx)
                for dy in range(-p, p + 1)
                for dx in range(-p, p + 1)
                if torch.equal(out, shifted(images[i], dy, dx))
            ]
            assert matches, f"image {i} is not a translation of the original"
            offsets.update(matches)
    assert len(offsets) == (2 * p + 1) ** 2  # every translation occurs


def test_flip_is_an_exact_mirror():
    images, labels = images_and_labels(n=200)
    flipped = 0
    for x, y in loader(images, labels, augment=Augment(flip=True)):
        for out, i in zip(pixels(x), y.tolist(), strict=True):
            mirror = torch.equal(out, images[i].flip(-1))
            assert mirror or torch.equal(out, images[i])
            flipped += mirror
    assert 60 < flipped < 140  # about half


def test_crop_and_flip_together():
    images, labels = images_and_labels(n=100)
    kinds = set()
    for x, y in loader(images, labels, augment=Augment(crop_padding=1, flip=True)):
        for out, i in zip(pixels(x), y.tolist(), strict=True):
            kind = [
                (mirror, dy, dx)
                for mirror in (False, True)
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
                if torch.equal(out, shifted(images[i].flip(-1) if mirror else images[i], dy, dx))
            ]
            assert kind
            kinds.update(kind)
    assert {mirror for mirror, _, _ in kinds} == {False, True}


@pytest.mark.parametrize("c", [1, 3])
def test_erasing_sets_one_box_to_the_mean(c):
    images = torch.full((300, c, 16, 16), 255, dtype=torch.uint8)
    labels = torch.arange(300)
    data = loader(images, labels, mean=(0.5,) * c, std=(0.5,) * c, augment=Augment(erasing=1.0))
    areas = []
    for x, _ in data:
        assert set(x.unique().tolist()) <= {0.0, 1.0}
        for out in x:
            erased = out == 0
            assert torch.equal(erased, erased[:1].expand_as(erased))  # same box in every channel
            rows, cols = erased[0].any(1).nonzero(), erased[0].any(0).nonzero()
            assert len(rows) and len(cols)
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert erased[0].sum() == box  # a filled rectangle
            areas.append(box.item() / 256)
    assert min(areas) >= 0.01 and max(areas) <= 0.45  # 2%-33%, up to rounding to pixels
    assert len({round(a, 2) for a in areas}) > 10  # sizes vary


def test_erasing_probability():
    images = torch.full((2000, 1, 8, 8), 255, dtype=torch.uint8)
    data = loader(images, torch.arange(2000), batch_size=500, augment=Augment(erasing=0.3))
    erased = torch.cat([(x == 0).flatten(1).any(1) for x, _ in data])
    assert 0.25 < erased.float().mean().item() < 0.35
    plain = loader(images, torch.arange(2000), batch_size=500, augment=Augment(erasing=0.0))
    assert all((x != 0).all() for x, _ in plain)


def test_mixup_mixes_images_and_targets_alike():
    images, labels = images_and_labels(n=64, c=3)
    data = loader(images, labels, augment=Augment(mixup_alpha=1.0), num_classes=64)
    lams = []
    for b, (x, y) in enumerate(data):
        assert y.shape == (16, 64) and y.dtype == torch.float32
        torch.testing.assert_close(y.sum(1), torch.ones(16))
        own = torch.arange(16 * b, 16 * b + 16)  # labels are indices: no shuffle
        partner = own.flip(0)  # the partner is the batch in reverse order
        lam = y[torch.arange(16), own].view(-1, 1, 1, 1)
        expected = lam * images[own] + (1 - lam) * images[partner]
        torch.testing.assert_close(x * 255, expected, rtol=1e-5, atol=1e-3)
        lams.append(lam[0].item())
    assert len(set(lams)) == len(lams)  # a new lambda per batch


def test_cutmix_pastes_a_box_and_weights_targets_by_area():
    images, labels = images_and_labels(n=64, h=16, w=16)
    data = loader(images, labels, augment=Augment(cutmix_alpha=1.0), num_classes=64)
    for b, (x, y) in enumerate(data):
        torch.testing.assert_close(y.sum(1), torch.ones(16))
        own = torch.arange(16 * b, 16 * b + 16)
        partner = own.flip(0)
        for k, out in enumerate(pixels(x)):
            pasted = out != images[own[k]]  # pixels are random: equal ones are rare
            assert torch.equal(out[pasted], images[partner[k]][pasted])
            if own[k] != partner[k]:
                # Pixels equal by chance (1 in 255) hide in the box; otherwise the area is exact.
                area = pasted.float().mean().item()
                assert y[k, partner[k]].item() == pytest.approx(area, abs=0.02)
                assert y[k, own[k]].item() == pytest.approx(1 - y[k, partner[k]].item())


def test_both_mixes_alternate():
    images, labels = images_and_labels(n=400, h=16, w=16)
    mixes = Augment(mixup_alpha=1.0, cutmix_alpha=1.0)
    data = loader(images, labels, augment=mixes, num_classes=400)
    kinds = set()
    for x, _ in data:
        # cutmix keeps original pixel values; mixup makes values between them
        values = x * 255
        kinds.add(torch.allclose(values, values.round(), atol=1e-3))
    assert kinds == {True, False}


def test_dtype_and_channels_last():
    images, labels = images_and_labels(c=3)
    x, _ = next(iter(loader(images, labels, dtype=torch.bfloat16, channels_last=True)))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)


def test_bad_arguments():
    images, labels = images_and_labels()
    with pytest.raises(ValueError, match="uint8"):
        loader(images.float(), labels)
    with pytest.raises(ValueError, match="labels"):
        loader(images, labels[:-1])
    with pytest.raises(ValueError, match="one value per channel"):
        loader(images, labels, mean=(0.5, 0.5), std=(0.5, 0.5))
    with pytest.raises(ValueError, match="batch_size"):
        loader(images, labels, batch_size=0)


def test_full_size_epoch_is_fast():
    # Guards against per-image Python creeping in: 60k 28x28 images, crop + flip + erasing.
    # One thread: on a small shared CPU, thread-pool hand-offs can cost more than the work.
    images = torch.randint(0, 256, (60_000, 1, 28, 28), dtype=torch.uint8)
    labels = torch.zeros(60_000, dtype=torch.int64)
    augment = Augment(crop_padding=2, flip=True, erasing=0.25)
    data = loader(images, labels, batch_size=256, shuffle=True, drop_last=True, augment=augment)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        next(iter(data))  # warm-up
        start = time.perf_counter()
        assert sum(len(x) for x, _ in data) == 59_904
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert seconds < 3.0  # about 0.2 s on one idle core
