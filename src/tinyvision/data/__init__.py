"""Data: find, check and read a data set into memory, then batch it on the training device.

    ds = load_dataset("fashion-mnist")          # uint8 tensors on the CPU, checked
    train_idx, val_idx = split_validation(ds.train_labels, 5000, seed=0)
    loader = DeviceLoader(ds.train_images, ds.train_labels, batch_size=256, mean=ds.mean,
                          std=ds.std, shuffle=True, drop_last=True, augment=Augment(flip=True),
                          device="cuda")

Where a data set is looked for, and how it is verified, is documented in ``sources.py``; the
file formats in ``formats.py``; batching and augmentation in ``loader.py``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tinyvision.data import sources
from tinyvision.data.formats import (
    check_labels,
    check_pair,
    parse_cifar_batch,
    parse_idx,
    read_bytes,
    read_cifar_archive,
    read_maybe_gzip,
)
from tinyvision.data.loader import TTA_MODES, Augment, DeviceLoader, tta_views
from tinyvision.data.sources import DATASET_INFO, NOT_VERIFIED, DatasetInfo, Located
from tinyvision.errors import DataError

if TYPE_CHECKING:  # the section is handed in: data never imports the config
    from tinyvision.config import DataConfig

__all__ = [
    "DATASET_INFO",
    "TTA_MODES",
    "Augment",
    "DatasetInfo",
    "DeviceLoader",
    "ImageDataset",
    "load_dataset",
    "load_dataset_for",
    "split_validation",
    "tta_views",
]


@dataclass
class ImageDataset:
    """Both official splits in memory as uint8 [N, C, H, W] images and int64 labels (CPU)."""

    name: str  # "fashion-mnist" | "cifar10"
    train_images: torch.Tensor = field(repr=False)
    train_labels: torch.Tensor = field(repr=False)
    test_images: torch.Tensor = field(repr=False)
    test_labels: torch.Tensor = field(repr=False)
    classes: list[str]
    mean: tuple[float, ...]  # per channel, training images in [0, 1]: DATASET_INFO constants
    std: tuple[float, ...]
    source: dict[str, str]  # location, found_by, integrity: where the data came from, for reports

    @property
    def in_chans(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train_images.shape[2:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    progress: bool = True,
) -> ImageDataset:
    """Find ``name`` (see ``sources.py`` for the order), check it and read both splits.

    ``verify=False`` trusts a local copy whose checksums differ from the official ones (for
    example a re-encoded copy): it is still parsed and checked for structure, a UserWarning is
    issued and ``source["integrity"]`` says so. Downloads are always verified.
    """
    info = sources.dataset_info(name)
    places = sources.search_places(name, data_dir)
    if data_dir:
        # A folder the user named is used or refused, never skipped for another copy: a typo
        # in --data-dir must not quietly train on whatever the cache or the system holds.
        places = [place for place in places if place.found_by == "data_dir argument"]
    located, tried = sources.locate(info, places)
    if located is None and data_dir:
        raise sources.data_dir_error(info, data_dir, tried)
    if located is None:
        if not download:
            raise sources.not_found_error(
                info, tried, "download: not tried (download=False, CLI --no-download)"
            )
        try:
            located = sources.download(info, progress=progress)
        except DataError as err:
            raise sources.not_found_error(info, tried, f"download: {err}") from err

    downloaded = located.found_by == "download"
    check = verify or downloaded
    try:
        read = _read_idx if located.layout == "idx" else _read_cifar
        train_images, train_labels, test_images, test_labels, checked = read(info, located, check)
    except DataError:
        if downloaded:  # the official file passed its download hash but not its content check
            sources.forget_download(info)
        raise

    if check:
        integrity = f"downloaded, {checked} verified" if downloaded else f"{checked} verified"
    else:
        integrity = NOT_VERIFIED
        warnings.warn(
            f"{info.title} at {located.location} was NOT checked against the official "
            "checksums (verify=false): results are only as good as this local copy.",
            UserWarning,
            stacklevel=2,
        )
    return ImageDataset(
        name=info.name,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=list(info.classes),
        mean=info.mean,
        std=info.std,
        source={
            "location": str(located.location),
            "found_by": located.found_by,
            "integrity": integrity,
        },
    )


def load_dataset_for(section: DataConfig, *, progress: bool = False) -> ImageDataset:
    """The data set a config's ``[data]`` section names, found and checked as it says."""
    return load_dataset(
        section.dataset,
        section.data_dir,
        download=section.download,
        verify=section.verify,
        progress=progress,
    )


def _read_idx(info: DatasetInfo, located: Located, check: bool):
    """Fashion-MNIST: four IDX files; each is decompressed once, then hashed and parsed."""
    out = []
    for images_name, labels_name in sources.FASHION_SPLITS.values():
        images_at, labels_at = located.files[images_name], located.files[labels_name]
        images_bytes, labels_bytes = read_maybe_gzip(images_at), read_maybe_gzip(labels_at)
        if check:
            what = "decompressed contents"
            sources.check_hash(images_bytes, info.checksums[images_name], images_at, what)
            sources.check_hash(labels_bytes, info.checksums[labels_name], labels_at, what)
        images = parse_idx(images_bytes, images_at, info.image_shape[1:]).unsqueeze(1)
        labels = parse_idx(labels_bytes, labels_at, ()).long()
        check_labels(labels, len(info.classes), labels_at)
        check_pair(images, labels, images_at, labels_at)
        out += [images, labels]
    return (*out, "sha256 of decompressed contents")


def _read_cifar(info: DatasetInfo, located: Located, check: bool):
    """CIFAR-10: five training batches and one test batch, from the folder or the archive."""
    names = [*sources.CIFAR_TRAIN_BATCHES, sources.CIFAR_TEST_BATCH]
    if located.layout == "cifar-archive":
        path = located.files[sources.CIFAR_ARCHIVE]
        raw = read_bytes(path)
        if check:
            (archive,) = [d for d in info.downloads if d.file_name == sources.CIFAR_ARCHIVE]
            sources.check_hash(raw, archive.known_hash, path, "archive")
        blobs = read_cifar_archive(raw, path, names)
        where = {name: f"{path}:{sources.CIFAR_FOLDER}/{name}" for name in names}
        checked = "md5 of the archive"
    else:
        blobs, where = {}, {}
        for name in names:
            path = located.files[name]
            blobs[name], where[name] = read_bytes(path), str(path)
            if check:
                sources.check_hash(blobs[name], info.checksums[name], path)
        checked = "md5 of each batch file"
    batches = {
        name: parse_cifar_batch(blobs[name], where[name], info.image_shape, len(info.classes))
        for name in names
    }
    train = [batches[name] for name in sources.CIFAR_TRAIN_BATCHES]
    test_images, test_labels = batches[sources.CIFAR_TEST_BATCH]
    train_images = torch.cat([images for images, _ in train])
    train_labels = torch.cat([labels for _, labels in train])
    return train_images, train_labels, test_images, test_labels, checked


def split_validation(
    labels: torch.Tensor, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx): a seeded, class-stratified hold-out of ``val_size`` indices.

    Each class gives ``val_size * class_count / N`` indices, rounded by largest remainder, so
    the validation split has the class balance of the training set. Both index tensors are
    sorted int64; the same labels, size and seed always give the same split.
    """
    labels = torch.as_tensor(labels).cpu()
    n = len(labels)
    classes, counts = torch.unique(labels, return_counts=True)
    if not len(classes) <= val_size < n:
        raise DataError(
            f"validation split of {val_size} images from {n} training images with "
            f"{len(classes)} classes is impossible: val_size must be at least the number of "
            f"classes (so each is represented) and below {n} (so training keeps images); "
            "set data.val_size accordingly, or 0 for no validation split"
        )
    # Largest-remainder apportionment; a class never gives all its images to validation.
    quota = counts.double() * val_size / n
    take = quota.floor().long()
    room = take < counts - 1
    order = torch.argsort(torch.where(room, quota - take, -1.0), descending=True, stable=True)
    short = val_size - int(take.sum())
    if short > int(room.sum()):
        raise DataError(
            f"validation split of {val_size} from {n} images leaves some class without training "
            "images; choose a smaller data.val_size"
        )
    take[order[:short]] += 1

    generator = torch.Generator().manual_seed(seed)
    val = []
    for cls, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = torch.nonzero(labels == cls).flatten()
        val.append(members[torch.randperm(len(members), generator=generator)[:k]])
    val_idx = torch.cat(val).sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    return torch.nonzero(keep).flatten(), val_idx
