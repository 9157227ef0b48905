"""Readers of the official file formats, each checking the structure it parses.

- IDX (Fashion-MNIST, MNIST): a big-endian header ``00 00 <type> <ndim>`` then ``ndim`` uint32
  sizes, then the values; here always unsigned bytes (type 0x08). Read raw or gzip-compressed.
- CIFAR-10 "python version": pickled dicts with ``data`` (uint8 [N, 3072], each row the 1024
  red, then green, then blue values of a 32x32 image, row-major) and ``labels`` (N ints),
  in ``cifar-10-batches-py/`` or inside the official ``cifar-10-python.tar.gz``.

Every problem raises :class:`DataError` naming the file and what is wrong with it. The readers
take bytes already in memory, so a caller hashes and parses the same decompressed bytes once.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import ClassVar

import numpy as np
import torch

from tinyvision.errors import DataError

_GET_IT_AGAIN = "delete it and get it again (a download re-fetches missing files)"


# ----------------------------------------------------------------------------- IDX


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err}); check its permissions") from err


def read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, decompressed if it is gzip (by its name or its first bytes)."""
    raw = read_bytes(path)
    if path.suffix != ".gz" and raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # bad header, cut short, bad CRC or data
        raise DataError(
            f"{path}: not a readable gzip file ({type(err).__name__}: {err}); it is corrupt or "
            f"was cut short: {_GET_IT_AGAIN}"
        ) from err


def parse_idx(data: bytes, path: Path, item_shape: tuple[int, ...]) -> torch.Tensor:
    """An IDX array of unsigned bytes with shape ``(N, *item_shape)``, as a uint8 tensor."""
    ndim = 1 + len(item_shape)
    magic = 0x0800 + ndim  # 00 00 08 <ndim>: unsigned bytes, ndim dimensions
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{path}: truncated, {len(data)} bytes is shorter than an IDX header ({header} bytes): "
            f"{_GET_IT_AGAIN}"
        )
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise DataError(
            f"{path}: wrong IDX magic number 0x{found:08x}, expected 0x{magic:08x} (unsigned "
            f"bytes, {ndim} dimensions); is this the right file? If so it is corrupt: "
            f"{_GET_IT_AGAIN}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if tuple(dims[1:]) != item_shape:
        raise DataError(
            f"{path}: holds items of shape {tuple(dims[1:])}, expected {item_shape}; "
            "is this the right file for this data set?"
        )
    size = header + math.prod(dims)
    if len(data) != size:
        problem = "truncated" if len(data) < size else "has trailing bytes"
        raise DataError(
            f"{path}: {problem}, its header promises {dims[0]} items = {size} bytes but it holds "
            f"{len(data)} bytes: {_GET_IT_AGAIN}"
        )
    if dims[0] == 0:
        raise DataError(f"{path}: holds no items: {_GET_IT_AGAIN}")
    array = np.frombuffer(data, np.uint8, offset=header).reshape(dims)
    return torch.from_numpy(array.copy())  # copy: frombuffer views read-only bytes


# ----------------------------------------------------------------------------- CIFAR-10


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle can run arbitrary code, and
    these files come from folders and downloads the user may not control."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("_codecs", "encode"),  # bytes written by protocol <= 2
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        *((f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")),
        *((f"numpy.{core}.multiarray", "scalar") for core in ("core", "_core")),
        *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_archive(raw: bytes, path: Path, names: list[str]) -> dict[str, bytes]:
    """The bytes of ``cifar-10-batches-py/<name>`` for each name, from the official tar.gz."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as archive:
            for member in archive:  # one pass: a gzip stream reads fastest in order
                member_path = PurePosixPath(member.name)
                in_folder = member_path.parent.name == "cifar-10-batches-py"
                if member.isfile() and in_folder and member_path.name in names:
                    found[member_path.name] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{path}: not a readable tar.gz archive ({type(err).__name__}: {err}); it is corrupt "
            f"or was cut short: {_GET_IT_AGAIN}"
        ) from err
    missing = [name for name in names if name not in found]
    if missing:
        raise DataError(
            f"{path}: the archive lacks cifar-10-batches-py/{', '.join(missing)}; it is not the "
            f"official CIFAR-10 python archive or is incomplete: {_GET_IT_AGAIN}"
        )
    return found


def parse_cifar_batch(
    raw: bytes, where: str, image_shape: tuple[int, int, int], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, C, H, W], labels int64 [N]) from one pickled CIFAR batch."""
    try:
        # latin1 reads the official Python 2 pickles (str keys, numpy buffers) as well as new ones.
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as err:  # a damaged pickle can fail in many ways, all meaning "unreadable"
        raise DataError(
            f"{where}: not a readable CIFAR-10 batch ({type(err).__name__}: {err}): {_GET_IT_AGAIN}"
        ) from err
    if not isinstance(batch, dict):
        raise DataError(f"{where}: holds a {type(batch).__name__}, expected a dict of arrays")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise DataError(
            f"{where}: the batch lacks the key(s) {', '.join(missing)} (has {sorted(batch)}); "
            "is this a CIFAR-10 python-version batch?"
        )
    data, labels = batch["data"], batch["labels"]
    row = math.prod(image_shape)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise DataError(
            f"{where}: 'data' must be a uint8 array of shape [N, {row}], got {data!r:.80}"
        )
    if data.shape[1] != row or data.shape[0] == 0:
        raise DataError(f"{where}: 'data' has shape {data.shape}, expected [N > 0, {row}]")
    try:
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: 'labels' is not a list of integers ({err})") from err
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"{where}: {data.shape[0]} images but labels of shape {tuple(labels.shape)}"
        )
    check_labels(labels, num_classes, where)
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, *image_shape).copy())
    return images, labels


# ----------------------------------------------------------------------------- both


def check_labels(labels: torch.Tensor, num_classes: int, where: object) -> None:
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"{where}: label values range over [{low}, {high}], expected 0..{num_classes - 1}; "
            f"the file is corrupt or belongs to another data set: {_GET_IT_AGAIN}"
        )


def check_pair(
    images: torch.Tensor, labels: torch.Tensor, images_at: object, labels_at: object
) -> None:
    if len(images) != len(labels):
        raise DataError(
            f"{images_at} holds {len(images)} images but {labels_at} holds {len(labels)} labels; "
            "the two files belong to different copies or splits: get both from one source"
        )
