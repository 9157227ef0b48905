"""Finding, checking and reading the data sets, on tiny files written here in the official formats.

Nothing here uses the network: downloads are served from a local HTTP server. The real
Fashion-MNIST is read when Debian's dataset-fashion-mnist package is installed.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyvision.data import DATASET_INFO, ImageDataset, load_dataset, sources, split_validation
from tinyvision.errors import DataError

FASHION_FILES = list(DATASET_INFO["fashion-mnist"].checksums)
CIFAR_BATCHES = [*sources.CIFAR_TRAIN_BATCHES, sources.CIFAR_TEST_BATCH]
SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test sees the user's environment, cache or system folders unless it puts them there."""
    monkeypatch.delenv("TINYVISION_DATA", raising=False)
    monkeypatch.setenv("TINYVISION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SYSTEM_FOLDERS", {"fashion-mnist": [], "cifar10": []})


# ----------------------------------------------------------------------------- writers


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 00 00 08 <ndim>, big-endian sizes, the values."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fashion(folder: Path, n_train=20, n_test=10, gz=True, seed=0) -> dict[str, bytes]:
    """Four tiny Fashion-MNIST files; returns the decompressed contents by file name."""
    rng = np.random.default_rng(seed)
    contents = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images_name, labels_name = sources.FASHION_SPLITS[split]
        contents[images_name] = idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        contents[labels_name] = idx_bytes(np.arange(n, dtype=np.uint8) % 10)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return contents


def sha256s(contents: dict[str, bytes]) -> dict[str, str]:
    return {name: "sha256:" + hashlib.sha256(data).hexdigest() for name, data in contents.items()}


def cifar_batch(n: int, seed: int, keys=bytes, labels=None, data=None) -> bytes:
    """A pickled batch like the official ones (Python 2 str keys load as bytes or str)."""
    rng = np.random.default_rng(seed)
    batch = {
        "batch_label": "tiny batch",
        "labels": list(rng.integers(0, 10, n)) if labels is None else labels,
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8) if data is None else data,
        "filenames": [f"img_{i}.png" for i in range(n)],
    }
    if keys is bytes:
        batch = {k.encode(): v for k, v in batch.items()}
    return pickle.dumps(batch, protocol=2)


def cifar_contents(n=4, keys=bytes) -> dict[str, bytes]:
    return {name: cifar_batch(n, seed, keys) for seed, name in enumerate(CIFAR_BATCHES)}


def write_cifar_folder(folder: Path, contents: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (folder / name).write_bytes(data)


def cifar_archive(contents: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in contents.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def replace_info(monkeypatch, name: str, **changes) -> None:
    monkeypatch.setitem(DATASET_INFO, name, dataclasses.replace(DATASET_INFO[name], **changes))


def load_unverified(*args, **kwargs) -> ImageDataset:
    with pytest.warns(UserWarning, match="NOT checked"):
        return load_dataset(*args, download=False, verify=False, **kwargs)


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_fashion_tiny_files_load_unverified(tmp_path, gz):
    contents = write_fashion(tmp_path / "d", gz=gz)
    ds = load_unverified("fashion-mnist", tmp_path / "d")
    assert ds.train_images.shape == (20, 1, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (10, 1, 28, 28)
    assert ds.train_labels.dtype == torch.int64 and ds.train_labels.tolist() == [
        i % 10 for i in range(20)
    ]
    written = np.frombuffer(contents["train-images-idx3-ubyte"], np.uint8, offset=16)
    assert ds.train_images.flatten().numpy().tobytes() == written.tobytes()
    assert (ds.in_chans, ds.image_size, ds.num_classes) == (1, (28, 28), 10)
    assert ds.classes[0] == "T-shirt/top" and ds.mean == DATASET_INFO["fashion-mnist"].mean
    assert ds.source == {
        "location": str(tmp_path / "d"),
        "found_by": "data_dir argument",
        "integrity": "NOT verified: trusted local copy (verify=false)",
    }


def test_fashion_checksum_mismatch_names_file_hashes_and_the_way_out(tmp_path):
    contents = write_fashion(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", tmp_path, download=False)
    message = str(err.value)
    official = DATASET_INFO["fashion-mnist"].checksums["train-images-idx3-ubyte"]
    actual = hashlib.sha256(contents["train-images-idx3-ubyte"]).hexdigest()
    assert "train-images-idx3-ubyte.gz" in message and "checksum mismatch" in message
    assert official.removeprefix("sha256:") in message and actual in message
    assert "verify=false" in message and "--no-verify" in message


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_fashion_checksum_is_of_decompressed_bytes(tmp_path, monkeypatch, gz):
    # One table serves .gz and raw files alike (Debian's re-compressed copy included).
    contents = write_fashion(tmp_path, gz=gz)
    replace_info(monkeypatch, "fashion-mnist", checksums=sha256s(contents))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # verified data must not warn
        ds = load_dataset("fashion-mnist", tmp_path, download=False)
    assert ds.source["integrity"] == "sha256 of decompressed contents verified"


def test_fashion_prefers_uncompressed_and_mixes_forms(tmp_path):
    contents = write_fashion(tmp_path, gz=True)
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(contents["train-images-idx3-ubyte"])
    assert len(load_unverified("fashion-mnist", tmp_path).train_images) == 20


def _truncate(data: bytes) -> bytes:
    return data[:-100]


def _wrong_magic(data: bytes) -> bytes:
    return b"\x00\x00\x08\x01" + data[4:]


def _wrong_dims(data: bytes) -> bytes:
    n = struct.unpack(">I", data[4:8])[0]
    return idx_bytes(np.zeros((n, 32, 32), np.uint8))


@pytest.mark.parametrize(
    ("file", "damage", "expected"),
    [
        ("train-images-idx3-ubyte", _truncate, "truncated"),
        ("train-images-idx3-ubyte", lambda d: d + b"\x00", "trailing bytes"),
        ("train-images-idx3-ubyte", lambda d: d[:10], "truncated"),
        ("t10k-images-idx3-ubyte", _wrong_magic, "wrong IDX magic number 0x00000801"),
        ("train-images-idx3-ubyte", _wrong_dims, "shape (32, 32), expected (28, 28)"),
        ("train-labels-idx1-ubyte", lambda d: d[:-1] + b"\x0a", "range over [0, 10]"),
        ("t10k-labels-idx1-ubyte", lambda d: idx_bytes(np.zeros(7, np.uint8)), "7 labels"),
    ],
)
def test_fashion_structural_problems(tmp_path, file, damage, expected):
    contents = write_fashion(tmp_path, gz=False)
    (tmp_path / file).write_bytes(damage(contents[file]))
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", tmp_path, download=False, verify=False)
    assert expected in str(err.value) and file in str(err.value)


@pytest.mark.parametrize(
    "damage",
    [
        lambda gz: gz[: len(gz) // 2],  # cut short
        lambda gz: gz[:10] + bytes(255 - b for b in gz[10:]),  # garbled stream
        lambda gz: b"this is not gzip at all",
    ],
    ids=["cut", "garbled", "not-gzip"],
)
def test_fashion_corrupt_gzip(tmp_path, damage):
    write_fashion(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match="not a readable gzip file") as err:
        load_dataset("fashion-mnist", tmp_path, download=False, verify=False)
    assert str(path) in str(err.value) and "get it again" in str(err.value)


def test_missing_data_lists_every_place_tried_and_how_to_get_it(tmp_path, monkeypatch):
    write_fashion(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("TINYVISION_DATA", str(tmp_path / "partial"))
    monkeypatch.setattr(sources, "SYSTEM_FOLDERS", {"fashion-mnist": [tmp_path / "sys"]})
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", download=False)
    message = str(err.value)
    for place in [
        f"{tmp_path / 'partial'} (TINYVISION_DATA): missing t10k-labels-idx1-ubyte[.gz]",
        f"{tmp_path / 'partial' / 'fashion-mnist'} (TINYVISION_DATA): no such folder",
        f"{tmp_path / 'cache' / 'fashion-mnist'} (user cache)",
        f"{tmp_path / 'sys'} (system folder)",
        "download: not tried (download=False, CLI --no-download)",
        "apt-get install dataset-fashion-mnist",
        "--data-dir",
    ]:
        assert place in message
    assert message.index("TINYVISION_DATA") < message.index("user cache")


@pytest.mark.parametrize("case", ["does not exist", "holds no data set"])
def test_a_data_dir_the_user_named_is_used_or_refused_never_skipped(
    case, tmp_path, monkeypatch, reliability
):
    # A complete copy elsewhere (the system folder) must not be used instead of the named one.
    write_fashion(tmp_path / "sys")
    monkeypatch.setattr(sources, "SYSTEM_FOLDERS", {"fashion-mnist": [tmp_path / "sys"]})
    named = tmp_path / ("typo" if case == "does not exist" else "empty")
    if case == "holds no data set":
        named.mkdir()
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", named, verify=False)  # download allowed: not tried either
    message = str(err.value)
    assert f"no Fashion-MNIST in the data folder you named, {named}" in message
    assert "nowhere else was searched and nothing was downloaded" in message
    assert str(tmp_path / "sys") not in message and "download:" not in message
    why = "no such folder" if case == "does not exist" else "missing train-images-idx3-ubyte"
    assert f"{named} (data_dir argument): {why}" in message
    reliability.record(
        "data folder",
        f"load_dataset(data_dir=DIR) where DIR {case} (a copy exists elsewhere)",
        f"DataError, nothing else searched: {message.splitlines()[0]} / {message.splitlines()[1]}",
    )


def test_unknown_data_set():
    with pytest.raises(DataError, match=r"unknown data set 'mnist'.*cifar10, fashion-mnist"):
        load_dataset("mnist")


def test_lookup_order(tmp_path, monkeypatch):
    # Each place holds a copy of a different size, so the size says which one was read.
    # (A data_dir argument is the only place searched when given: see the test above.)
    places = {
        "TINYVISION_DATA": tmp_path / "env",
        "user cache": tmp_path / "cache" / "fashion-mnist",
        "system folder": tmp_path / "sys",
    }
    for n, folder in enumerate(places.values(), start=1):
        write_fashion(folder, n_train=10 * n)
    monkeypatch.setenv("TINYVISION_DATA", str(places["TINYVISION_DATA"]))
    monkeypatch.setattr(sources, "SYSTEM_FOLDERS", {"fashion-mnist": [places["system folder"]]})
    for n, (found_by, folder) in enumerate(places.items(), start=1):
        ds = load_unverified("fashion-mnist")
        assert (ds.source["found_by"], len(ds.train_images)) == (found_by, 10 * n)
        assert ds.source["location"] == str(folder)
        for file in folder.iterdir():  # gone: the next place down is used
            file.unlink()


def test_user_folder_may_hold_a_subfolder_per_data_set(tmp_path, monkeypatch):
    write_fashion(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("TINYVISION_DATA", str(tmp_path / "data"))
    ds = load_unverified("fashion-mnist")
    assert ds.source["location"] == str(tmp_path / "data" / "fashion-mnist")
    assert ds.source["found_by"] == "TINYVISION_DATA"


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is absent")
def test_real_fashion_mnist_verifies_and_is_complete(monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_FOLDERS", {"fashion-mnist": [SYSTEM_FASHION]})
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.source == {
        "location": str(SYSTEM_FASHION),
        "found_by": "system folder",
        "integrity": "sha256 of decompressed contents verified",
    }
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_labels).tolist() == [6000] * 10
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10
    # The documented normalisation constants are those of these training images.
    counts = torch.bincount(ds.train_images.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (counts * values).sum() / counts.sum()
    std = ((counts * (values - mean) ** 2).sum() / counts.sum()).sqrt()
    assert (mean.item(), std.item()) == pytest.approx((ds.mean[0], ds.std[0]), abs=1e-6)


# ----------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("layout", ["subfolder", "folder-itself", "archive"])
@pytest.mark.parametrize("keys", [bytes, str])
def test_cifar_layouts_load(tmp_path, layout, keys):
    contents = cifar_contents(keys=keys)
    if layout == "subfolder":
        data_dir, location = tmp_path, tmp_path / "cifar-10-batches-py"
        write_cifar_folder(location, contents)
    elif layout == "folder-itself":
        data_dir = location = tmp_path / "mine"
        write_cifar_folder(location, contents)
    else:
        data_dir = location = tmp_path
        (tmp_path / "cifar-10-python.tar.gz").write_bytes(cifar_archive(contents))
    ds = load_unverified("cifar10", data_dir)
    assert ds.source["location"] == str(location)
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.test_images.shape == (4, 3, 32, 32)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert (ds.in_chans, ds.image_size, ds.classes[0]) == (3, (32, 32), "airplane")
    key = b"data" if keys is bytes else "data"
    train_data = [pickle.loads(contents[name], encoding="latin1")[key] for name in CIFAR_BATCHES]
    # Rows are 1024 red, 1024 green, 1024 blue values of a row-major 32x32 image.
    assert ds.train_images[0, 1, 2, 3] == train_data[0][0, 1024 + 2 * 32 + 3]
    assert torch.equal(ds.train_images.flatten(1), torch.from_numpy(np.concatenate(train_data[:5])))
    assert torch.equal(ds.test_images.flatten(1), torch.from_numpy(train_data[5]))


def test_cifar_folder_md5_checked_per_batch(tmp_path, monkeypatch):
    contents = cifar_contents()
    write_cifar_folder(tmp_path, contents)
    with pytest.raises(DataError, match="data_batch_1: checksum mismatch") as err:
        load_dataset("cifar10", tmp_path, download=False)
    assert "c99cafc152244af753f735de768cd75f" in str(err.value)
    assert hashlib.md5(contents["data_batch_1"]).hexdigest() in str(err.value)
    md5s = {name: "md5:" + hashlib.md5(data).hexdigest() for name, data in contents.items()}
    replace_info(monkeypatch, "cifar10", checksums=md5s)
    ds = load_dataset("cifar10", tmp_path, download=False)
    assert ds.source["integrity"] == "md5 of each batch file verified"


def test_cifar_archive_md5_checked(tmp_path, monkeypatch):
    archive = cifar_archive(cifar_contents())
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(archive)
    with pytest.raises(DataError, match="c58f30108f718f92721af3b95e74349a") as err:
        load_dataset("cifar10", tmp_path, download=False)
    assert "cifar-10-python.tar.gz: checksum mismatch" in str(err.value)
    info = DATASET_INFO["cifar10"]
    download = dataclasses.replace(info.downloads[0], known_hash=_md5(archive))
    replace_info(monkeypatch, "cifar10", downloads=(download,))
    ds = load_dataset("cifar10", tmp_path, download=False)
    assert ds.source["integrity"] == "md5 of the archive verified"


def _md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        (pickle.dumps({b"labels": [1, 2]}), "lacks the key(s) data"),
        (cifar_batch(2, 0, data=np.zeros((2, 1024), np.uint8)), "shape (2, 1024)"),
        (cifar_batch(2, 0, data=np.zeros((2, 3072), np.float32)), "must be a uint8 array"),
        (cifar_batch(2, 0, labels=[1]), "2 images but labels of shape (1,)"),
        (cifar_batch(2, 0, labels=[1, 10]), "label values range over [1, 10]"),
        (b"\x80\x02garbage", "not a readable CIFAR-10 batch"),
        (pickle.dumps([1, 2]), "holds a list"),
        (pickle.dumps({b"data": _Exploit()}), "refusing to load"),
    ],
    ids=["no-data", "shape", "dtype", "count", "label-range", "garbage", "list", "exploit"],
)
def test_cifar_bad_batches(tmp_path, batch, expected):
    contents = cifar_contents()
    contents["data_batch_3"] = batch
    write_cifar_folder(tmp_path, contents)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path, download=False, verify=False)
    assert expected in str(err.value)
    assert str(tmp_path / "data_batch_3") in str(err.value)


def test_cifar_bad_archives(tmp_path):
    contents = cifar_contents()
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(cifar_archive(contents)[:200])
    with pytest.raises(DataError, match=r"not a readable tar\.gz archive"):
        load_dataset("cifar10", tmp_path, download=False, verify=False)
    del contents["test_batch"]
    path.write_bytes(cifar_archive(contents))
    with pytest.raises(DataError, match="lacks cifar-10-batches-py/test_batch"):
        load_dataset("cifar10", tmp_path, download=False, verify=False)


def test_cifar_missing_explains(tmp_path):
    write_cifar_folder(tmp_path / "cifar-10-batches-py", {"data_batch_1": cifar_batch(2, 0)})
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path, download=False)
    message = str(err.value)
    assert "no CIFAR-10 in the data folder you named" in message
    assert "lacks data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


# ----------------------------------------------------------------------------- downloads


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server for tmp_path/served; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    for var in ("no_proxy", "NO_PROXY"):  # requests must not send 127.0.0.1 to a proxy
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def serve_fashion(tmp_path, monkeypatch, url, *, publish_bad_hash=False, contents_ok=True):
    """Serve tiny .gz files and point the download table at them."""
    contents = write_fashion(tmp_path / "served")
    downloads = []
    for name in FASHION_FILES:
        gz = (tmp_path / "served" / f"{name}.gz").read_bytes()
        known = _md5(b"something else" if publish_bad_hash else gz)
        downloads.append(sources.Download(f"{url}{name}.gz", f"{name}.gz", known))
    checksums = sha256s(contents) if contents_ok else DATASET_INFO["fashion-mnist"].checksums
    replace_info(monkeypatch, "fashion-mnist", downloads=tuple(downloads), checksums=checksums)


def test_download_is_verified_cached_and_reused(tmp_path, monkeypatch, server):
    serve_fashion(tmp_path, monkeypatch, server)
    ds = load_dataset("fashion-mnist", verify=False, progress=False)  # downloads always verify
    cache = tmp_path / "cache" / "fashion-mnist"
    assert ds.source == {
        "location": str(cache),
        "found_by": "download",
        "integrity": "downloaded, sha256 of decompressed contents verified",
    }
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in FASHION_FILES)
    again = load_dataset("fashion-mnist", download=False)
    assert again.source["found_by"] == "user cache"
    assert torch.equal(again.train_images, ds.train_images)


def test_corrupt_download_is_rejected_and_not_kept(tmp_path, monkeypatch, server):
    serve_fashion(tmp_path, monkeypatch, server, publish_bad_hash=True)
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", progress=False)
    message = str(err.value)
    assert "Fashion-MNIST was not found" in message and "download: downloading" in message
    assert "hash" in message.lower() and "nothing half-downloaded was kept" in message
    cache = tmp_path / "cache" / "fashion-mnist"
    assert not cache.exists() or list(cache.iterdir()) == []  # no file, no temporary file


def test_download_failing_the_content_check_is_deleted(tmp_path, monkeypatch, server):
    serve_fashion(tmp_path, monkeypatch, server, contents_ok=False)
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("fashion-mnist", progress=False)
    assert list((tmp_path / "cache" / "fashion-mnist").iterdir()) == []


def test_unreachable_server(tmp_path, monkeypatch):
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    bad = sources.Download("http://127.0.0.1:9/x.gz", "x.gz", "md5:0")  # port 9: discard
    replace_info(monkeypatch, "fashion-mnist", downloads=(bad,))
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", progress=False)
    assert "download: downloading http://127.0.0.1:9/x.gz" in str(err.value)
    assert str(tmp_path) in str(err.value) and "apt-get install" in str(err.value)


# ----------------------------------------------------------------------------- validation split


def test_split_validation_is_stratified_and_deterministic():
    labels = torch.arange(1000) % 10
    train_idx, val_idx = split_validation(labels, 100, seed=3)
    assert len(val_idx) == 100 and len(train_idx) == 900
    assert torch.bincount(labels[val_idx]).tolist() == [10] * 10
    assert torch.equal(torch.cat([train_idx, val_idx]).sort().values, torch.arange(1000))
    assert torch.equal(split_validation(labels, 100, seed=3)[1], val_idx)
    assert not torch.equal(split_validation(labels, 100, seed=4)[1], val_idx)


@pytest.mark.parametrize("val_size", [0, 9, 1000, 5000])
def test_split_validation_rejects_impossible_sizes(val_size):
    with pytest.raises(DataError, match="val_size"):
        split_validation(torch.arange(1000) % 10, val_size, seed=0)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(3, 30), min_size=2, max_size=6),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_split_validation_properties(counts, fraction, seed):
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    n = len(labels)
    val_size = len(counts) + round(fraction * (n - 1 - 2 * len(counts)))
    train_idx, val_idx = split_validation(labels, val_size, seed)
    assert len(val_idx) == val_size
    assert torch.equal(torch.cat([train_idx, val_idx]).sort().values, torch.arange(n))
    per_class = torch.bincount(labels[val_idx], minlength=len(counts))
    expected = torch.tensor(counts) * val_size / n
    assert ((per_class - expected).abs() < 1).all()  # proportional, up to rounding
    assert (torch.bincount(labels[train_idx], minlength=len(counts)) > 0).all()
