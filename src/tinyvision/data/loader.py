"""A loader that keeps a whole split on the training device and augments whole batches.

Small image data sets fit in device memory many times over (Fashion-MNIST's 60k training
images are 47 MB as uint8), so, as in airbench, the images move to the device once and every
batch is made there by indexing: no worker processes, no per-image Python.

Per epoch, all randomness is drawn up front from the loader's ``generator``: the order, then
each image's translation, flip and erasing box, then a seed for the per-batch mixup/cutmix
draws. An epoch is therefore a pure function of the generator state when it starts, and
``epoch(start=k)`` resumes one at batch ``k`` exactly.

Per batch:

1. translate by up to ``crop_padding`` pixels and flip horizontally, both by picking one
   window per image out of the stored zero-padded images and their mirror images (padding
   with black uint8 pixels before normalising, as torchvision's ``RandomCrop(padding)``),
2. normalise ``(x / 255 - mean) / std``,
3. random erasing: a box per image set to 0, the mean after normalisation (timm's "const"),
4. mixup or cutmix with the batch in reverse order as partner (timm), which turns the labels
   into soft targets.

Memory: with crop or flip the loader holds the padded images, and for flips their mirror
images too: 2 (H + 2p)(W + 2p) / (H W) times the split (3.1x for CIFAR-10 with p = 4).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F

from tinyvision.config import TTAMode
from tinyvision.errors import DataError

# Random erasing box, as in Zhong et al. 2017 and torchvision/timm: 2%-33% of the image area,
# aspect ratio 0.3-3.3 (sampled log-uniformly so tall and wide boxes are equally likely).
ERASE_AREA = (0.02, 1 / 3)
ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))


@dataclass
class Augment:
    """Training augmentation, applied to whole batches on the loader's device."""

    crop_padding: int = 0  # random translation by up to +-crop_padding pixels, zero fill
    flip: bool = False  # horizontal flip with probability 1/2
    erasing: float = 0.0  # probability per image of erasing a random box
    mixup_alpha: float = 0.0  # mixup with lambda ~ Beta(a, a); 0 = off
    cutmix_alpha: float = 0.0  # cutmix with lambda ~ Beta(a, a); 0 = off; both on: 50/50 per batch

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


# Test-time augmentation: the views of an image whose predictions are averaged. Each mode undoes
# an augmentation the model was trained with: "flip" suits training with augment.flip, "shift"
# views (translations by one pixel, black fill) suit training with augment.crop_padding.
TTA_MODES: tuple[str, ...] = get_args(TTAMode)


def tta_views(images: torch.Tensor, mode: str, fill: torch.Tensor) -> list[torch.Tensor]:
    """``images`` [B, C, H, W] (normalised) and its test-time views, the images themselves first:
    the mirror image for "flip"; for "flip-shift" also both of them moved one pixel down-right
    and up-left, the uncovered border filled with ``fill`` [1, C, 1, 1] (normalised black)."""
    if mode not in TTA_MODES:
        raise DataError(f"unknown test-time augmentation {mode!r}; choose one of {TTA_MODES}")
    views = [images]
    if mode in ("flip", "flip-shift"):
        views.append(images.flip(-1))
    if mode == "flip-shift":
        h, w = images.shape[-2:]
        for view in views[:2]:
            padded = F.pad(view - fill, (1, 1, 1, 1)) + fill
            views.append(padded[..., :h, :w])  # content moved down-right by one pixel
            views.append(padded[..., 2:, 2:])  # content moved up-left by one pixel
    return views


class DeviceLoader:
    """Batches ``(x, y)`` of a device-resident split.

    ``x`` is ``dtype`` [B, C, H, W], normalised. ``y`` is int64 [B] class indices, except when
    the augmentation mixes images (mixup or cutmix): then every batch's ``y`` is a float32
    [B, num_classes] soft target whose rows sum to 1, which ``F.cross_entropy`` accepts as is.

    The images move to ``device`` once, here. Every random choice comes from ``generator``, a
    ``torch.Generator`` on that device (default: a new one seeded 0); see ``epoch`` for resuming.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool,
        drop_last: bool,
        augment: Augment | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        num_classes: int = 10,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {images.dtype} {images.shape}"
            )
        if labels.shape != images.shape[:1]:
            raise ValueError(f"{len(images)} images but labels of shape {tuple(labels.shape)}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"mean and std need one value per channel ({images.shape[1]})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(0)
        if generator.device.type != self.device.type:
            raise ValueError(f"the generator is on {generator.device}, the loader on {self.device}")
        self.generator = generator
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.augment = augment or Augment()
        self.windows = None
        if self.augment.crop_padding or self.augment.flip:
            # Stored once (airbench pads once too): the zero-padded images, followed by their
            # mirror images when flipping. A translated (and flipped) image is then an H x W
            # window of this tensor, see _plan.
            p, (n, c, h, w) = self.augment.crop_padding, self.images.shape
            padded = F.pad(self.images, (p, p, p, p))  # zeros: black pixels, before normalising
            if self.augment.flip:
                padded = torch.cat([padded, padded.flip(3)])
            # A view with one [C, H, W] window per flat offset into the padded tensor: a window
            # is fixed by where it starts, so a batch of windows is one index_select (much
            # faster on CPU than advanced indexing over image, row and column).
            hp, wp = h + 2 * p, w + 2 * p
            flat = padded.view(-1)
            reach = (c - 1) * hp * wp + (h - 1) * wp + w  # elements spanned by one window
            self.windows = flat.as_strided((flat.numel() - reach + 1, c, h, w), (1, hp * wp, wp, 1))
            self.images = padded[:n, :, p : p + h, p : p + w]  # the originals as a view
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.dtype = dtype
        self.channels_last = channels_last
        self.num_classes = num_classes
        # (x / 255 - mean) / std as one multiply-add: x * scale + shift.
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.scale = 1 / (255 * std_t)
        self.shift = -mean_t / std_t
        self._one = torch.ones((), device=self.device)

    def __len__(self) -> int:
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch()

    def epoch(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch, from batch ``start`` on.

        The epoch's randomness is drawn from the generator here, at the call, so restoring
        ``generator.get_state()`` saved before the call and passing the batch index to resume
        at reproduces the rest of the epoch exactly.
        """
        plan = self._plan()
        return (self._batch(plan, i) for i in range(start, len(self)))

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=self.device)

    def _plan(self) -> dict[str, torch.Tensor | int]:
        """Every random choice of one epoch, for each position in the epoch's order."""
        n, aug, (_, _, h, w) = len(self.images), self.augment, self.images.shape
        plan: dict[str, torch.Tensor | int] = {}
        if self.shuffle:
            plan["order"] = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            plan["order"] = torch.arange(n, device=self.device)
        if self.windows is not None:
            # Where each image's window starts in the padded tensor: which stored image (its
            # mirror image sits n places later), then offsets of 0..2p rows and columns into
            # it, i.e. a translation by -p..p pixels.
            c, p = self.images.shape[1], aug.crop_padding
            hp, wp = h + 2 * p, w + 2 * p
            source = plan["order"]
            if aug.flip:
                source = source + n * (self._rand(n) < 0.5)
            dy, dx = torch.randint(
                0, 2 * p + 1, (2, n), generator=self.generator, device=self.device
            )
            plan["start"] = source * (c * hp * wp) + dy * wp + dx
        if aug.erasing:
            erase, area, log_aspect, top, left = self._rand(5, n)
            area = h * w * (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * area)
            lo, hi = ERASE_LOG_ASPECT
            aspect = torch.exp(lo + (hi - lo) * log_aspect)
            # torchvision retries boxes that do not fit; clamping them keeps this batched.
            box_h = torch.sqrt(area * aspect).round().clamp(1, h)[:, None]
            box_w = torch.sqrt(area / aspect).round().clamp(1, w)[:, None]
            top = (top[:, None] * (h - box_h + 1)).floor()  # uniform over the positions that fit
            left = (left[:, None] * (w - box_w + 1)).floor()
            rows = torch.arange(h, device=self.device)
            cols = torch.arange(w, device=self.device)
            # The box of image i is the outer product of these two 0/1 vectors.
            in_rows = (rows >= top) & (rows < top + box_h) & (erase < aug.erasing)[:, None]
            plan["erase_rows"] = in_rows.float()  # [n, H]
            plan["erase_cols"] = ((cols >= left) & (cols < left + box_w)).float()  # [n, W]
        if aug.mixes:
            # Mixing draws a few scalars per batch (lambda, box); numpy's Beta sampler takes a
            # seed, which comes from the generator so the epoch stays a function of its state.
            seed = torch.randint(0, 2**62, (1,), generator=self.generator, device=self.device)
            plan["mix_seed"] = int(seed.item())
        return plan

    def _batch(self, plan: dict, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        aug, rows = self.augment, slice(index * self.batch_size, (index + 1) * self.batch_size)
        idx = plan["order"][rows]
        y = self.labels.index_select(0, idx)
        if self.windows is None:
            x = self.images.index_select(0, idx)  # on CPU much faster than images[idx]
        else:  # translated and flipped: one window of the padded images per image
            x = self.windows.index_select(0, plan["start"][rows])

        x = x.float().mul_(self.scale).add_(self.shift)  # (x / 255 - mean) / std

        if aug.erasing:  # set the box to 0, i.e. to the mean: x *= 1 - rows (outer) cols
            in_rows, in_cols = plan["erase_rows"][rows, :, None], plan["erase_cols"][rows, None, :]
            x.mul_(torch.baddbmm(self._one, in_rows, in_cols, alpha=-1)[:, None])

        if aug.mixes:
            x, y = self._mix(x, y, np.random.default_rng([plan["mix_seed"], index]))

        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _mix(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
        """Mixup or cutmix of each image with its partner in the reversed batch."""
        aug, (_, _, h, w) = self.augment, x.shape
        targets = F.one_hot(y, self.num_classes).float()
        use_cutmix = aug.cutmix_alpha > 0 and (aug.mixup_alpha == 0 or rng.random() < 0.5)
        if use_cutmix:
            lam = float(rng.beta(aug.cutmix_alpha, aug.cutmix_alpha))
            # A box of area (1 - lam) centred anywhere, clipped to the image (Yun et al. 2019);
            # lam is then recomputed from the clipped box so targets match the pixels.
            cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
            x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        else:
            lam = float(rng.beta(aug.mixup_alpha, aug.mixup_alpha))
            x = x.mul(lam).add_(x.flip(0), alpha=1 - lam)
        return x, targets.mul(lam).add_(targets.flip(0), alpha=1 - lam)
