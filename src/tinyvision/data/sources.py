"""Where the data sets come from: what the files are, where to look, how to check and fetch them.

``load_dataset`` looks for a data set in this order and uses the first complete copy:

1. the ``data_dir`` argument (CLI ``--data-dir``, config ``data.data_dir``): when given, it is
   the only place searched (a folder the user named is used or refused, never skipped),
2. the folder in the environment variable ``TINYVISION_DATA``,
3. the user cache, ``pooch.os_cache("tinyvision")`` or ``$TINYVISION_CACHE``,
4. system folders (Debian's ``dataset-fashion-mnist`` installs ``/usr/share/datasets/...``),
5. a download of the official files into the user cache (unless ``download=False``).

A user folder (1, 2) may hold the files directly or in a sub-folder named after the data set
(``DIR/fashion-mnist/``), so one ``--data-dir`` serves both data sets.

Integrity is checked on the *contents* the readers parse: Fashion-MNIST by the SHA-256 of the
decompressed IDX bytes (Debian re-compressed the ``.gz`` files, the payload is the original),
CIFAR-10 by the published MD5 of the archive or of each extracted batch file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pooch

from tinyvision.errors import DataError


@dataclass(frozen=True)
class Download:
    """One official file: pooch keeps it only if its published hash matches."""

    url: str
    file_name: str  # name in the cache folder
    known_hash: str  # "md5:<hex>" of the file exactly as published


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (C, H, W)
    num_train: int  # sizes of the official splits (documentation; the hashes pin them)
    num_test: int
    # Per-channel mean/std of the official training images scaled to [0, 1], computed once over
    # all pixels of the 60k (Fashion-MNIST) / 50k (CIFAR-10) training images. Constants, so a
    # model normalises the same way whatever subset or validation split it trains on.
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # File the readers parse -> "sha256:<hex>" / "md5:<hex>" of its contents. For Fashion-MNIST
    # the contents are the decompressed IDX bytes, so ``X`` and ``X.gz`` both match.
    checksums: dict[str, str]
    downloads: tuple[Download, ...]
    how_to_get: str  # printed when no copy is found


_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"  # the folder inside the archive
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
# Fashion-MNIST: split -> (images file, labels file), as named in the checksum table.
FASHION_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _fashion_download(name: str, md5: str) -> Download:
    return Download(f"{_FASHION_URL}{name}.gz", f"{name}.gz", f"md5:{md5}")


DATASET_INFO: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        title="Fashion-MNIST",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        image_shape=(1, 28, 28),
        num_train=60_000,
        num_test=10_000,
        mean=(0.2860406,),
        std=(0.3530242,),
        # SHA-256 of the decompressed files (shared/data/README.md; equal for the authors' and
        # Debian's copies).
        checksums={
            "train-images-idx3-ubyte": "sha256:c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",  # noqa: E501
            "train-labels-idx1-ubyte": "sha256:bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",  # noqa: E501
            "t10k-images-idx3-ubyte": "sha256:5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",  # noqa: E501
            "t10k-labels-idx1-ubyte": "sha256:0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",  # noqa: E501
        },
        # MD5 of the .gz files, published in github.com/zalandoresearch/fashion-mnist
        downloads=(
            _fashion_download("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            _fashion_download("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe"),
            _fashion_download("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79"),
            _fashion_download("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
        how_to_get=(
            "  - on Debian/Ubuntu: `apt-get install dataset-fashion-mnist` (installs "
            "/usr/share/datasets/fashion-mnist, found automatically), or\n"
            "  - put train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
            "t10k-labels-idx1-ubyte (.gz or uncompressed) in a folder and pass --data-dir DIR "
            "(config data.data_dir, or set TINYVISION_DATA=DIR), or\n"
            f"  - allow the download (download=True, config data.download=true) from {_FASHION_URL}"
        ),
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        title="CIFAR-10",
        classes=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        image_shape=(3, 32, 32),
        num_train=50_000,
        num_test=10_000,
        mean=(0.4913997, 0.4821584, 0.4465309),
        std=(0.2470322, 0.2434851, 0.2615878),
        # MD5 of the extracted batch files as published with torchvision's CIFAR10 class.
        checksums={
            "data_batch_1": "md5:c99cafc152244af753f735de768cd75f",
            "data_batch_2": "md5:d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "md5:54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "md5:634d18415352ddbe9e10b8af5f6ed6c1",
            "data_batch_5": "md5:482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "md5:40351d587109b95175f43aff81a1287e",
        },
        downloads=(Download(_CIFAR_URL, CIFAR_ARCHIVE, "md5:c58f30108f718f92721af3b95e74349a"),),
        how_to_get=(
            f"  - download {_CIFAR_URL} (python version) and pass --data-dir DIR for the folder "
            f"holding {CIFAR_ARCHIVE} or its extracted {CIFAR_FOLDER}/ (config data.data_dir, or "
            "set TINYVISION_DATA=DIR), or\n"
            "  - allow the download (download=True, config data.download=true)"
        ),
    ),
}

# Data-set folders that system packages install; tests replace this table.
SYSTEM_FOLDERS: dict[str, list[Path]] = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "cifar10": [],
}

NOT_VERIFIED = "NOT verified: trusted local copy (verify=false)"


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASET_INFO:
        raise DataError(
            f"unknown data set {name!r}: tinyvision knows {', '.join(sorted(DATASET_INFO))}; "
            "set data.dataset to one of these"
        )
    return DATASET_INFO[name]


def cache_dir() -> Path:
    """The user cache for downloads: ``$TINYVISION_CACHE`` or the OS cache folder."""
    return Path(os.environ.get("TINYVISION_CACHE") or pooch.os_cache("tinyvision"))


@dataclass(frozen=True)
class Place:
    folder: Path | None  # None: the environment variable that would name it is not set
    found_by: str  # how this folder came to be searched, for messages and ImageDataset.source


def search_places(name: str, data_dir: str | Path | None) -> list[Place]:
    """Every folder to look in, in the documented order."""
    places = []
    env_dir = os.environ.get("TINYVISION_DATA")
    for root, found_by in [(data_dir, "data_dir argument"), (env_dir, "TINYVISION_DATA")]:
        if root:
            root = Path(root).expanduser()
            places += [Place(root, found_by), Place(root / name, found_by)]
        elif found_by == "TINYVISION_DATA":
            places.append(Place(None, found_by))
    places.append(Place(cache_dir() / name, "user cache"))
    places += [Place(Path(folder), "system folder") for folder in SYSTEM_FOLDERS.get(name, [])]
    return places


@dataclass(frozen=True)
class Located:
    """A complete copy of a data set: the files to read, as a layout the readers know."""

    layout: str  # "idx" (one file per split/role), "cifar-folder" or "cifar-archive"
    files: dict[str, Path]  # checksum-table name (or the archive name) -> path
    location: Path
    found_by: str = ""  # filled in by locate() / download()


def find_in(info: DatasetInfo, folder: Path) -> tuple[Located | None, str]:
    """A complete copy in ``folder``, or None and why not (for the not-found message)."""
    if not folder.is_dir():
        return None, "no such folder" if not folder.exists() else "not a folder"
    if info.name == "fashion-mnist":
        files, missing = {}, []
        for name in info.checksums:
            # Prefer the uncompressed file: same contents, nothing to decompress.
            path = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
            if path is None:
                missing.append(f"{name}[.gz]")
            else:
                files[name] = path
        if missing:
            return None, "missing " + ", ".join(missing)
        return Located("idx", files, folder), ""
    # CIFAR-10: the extracted folder (inside ``folder`` or ``folder`` itself), then the archive.
    reasons = []
    for batches in (folder / CIFAR_FOLDER, folder):
        paths = {name: batches / name for name in info.checksums}
        missing = [name for name, path in paths.items() if not path.is_file()]
        if not missing:
            return Located("cifar-folder", paths, batches), ""
        if len(missing) < len(paths):  # a partial copy is worth mentioning; an absent one is not
            reasons.append(f"{batches} lacks {', '.join(missing)}")
    if (folder / CIFAR_ARCHIVE).is_file():
        return Located("cifar-archive", {CIFAR_ARCHIVE: folder / CIFAR_ARCHIVE}, folder), ""
    reasons.append(f"no complete {CIFAR_FOLDER}/ and no {CIFAR_ARCHIVE}")
    return None, "; ".join(reasons)


def locate(info: DatasetInfo, places: list[Place]) -> tuple[Located | None, list[str]]:
    """The first complete copy along ``places``, and a line for every place tried before it."""
    tried = []
    for place in places:
        if place.folder is None:
            tried.append(f"${place.found_by}: not set")
            continue
        located, why_not = find_in(info, place.folder)
        if located is not None:
            return dataclasses.replace(located, found_by=place.found_by), tried
        tried.append(f"{place.folder} ({place.found_by}): {why_not}")
    return None, tried


def not_found_error(info: DatasetInfo, tried: list[str], download_note: str) -> DataError:
    lines = "\n".join(f"  - {line}" for line in [*tried, download_note])
    return DataError(
        f"{info.title} was not found. Places tried, in order:\n{lines}\n"
        f"To get it:\n{info.how_to_get}"
    )


def data_dir_error(info: DatasetInfo, data_dir: str | Path, tried: list[str]) -> DataError:
    """The folder the user named holds no complete copy: refuse, naming what is wrong there."""
    lines = "\n".join(f"  - {line}" for line in tried)
    return DataError(
        f"no {info.title} in the data folder you named, {data_dir} (--data-dir, config "
        f"data.data_dir); nowhere else was searched and nothing was downloaded:\n{lines}\n"
        "Fix the path, or leave --data-dir out to use the usual places (TINYVISION_DATA, the "
        f"user cache, system folders, a download). To get it:\n{info.how_to_get}"
    )


def check_hash(data: bytes, expected: str, path: Path, what: str = "contents") -> None:
    """Raise DataError unless ``data`` hashes to ``expected`` ("<algorithm>:<hex>")."""
    algorithm, _, want = expected.partition(":")
    got = hashlib.new(algorithm, data).hexdigest()
    if got != want:
        raise DataError(
            f"{path}: checksum mismatch, the file is corrupt or not the official one.\n"
            f"  expected {algorithm} of the {what}: {want}\n"
            f"  actual   {algorithm} of the {what}: {got}\n"
            "Delete the file and get it again (a download re-fetches missing files), or, if you "
            "trust this local copy, skip the check with verify=false (CLI --no-verify, config "
            "data.verify=false)."
        )


def download(info: DatasetInfo, *, progress: bool) -> Located:
    """Fetch the official files into the user cache; a file is kept only if its hash matches.

    pooch streams each file to a temporary name in the cache folder and renames it only after
    the hash check, so an interrupted or corrupt download never looks like a finished one.
    """
    folder = cache_dir() / info.name
    for item in info.downloads:
        try:
            pooch.retrieve(
                item.url,
                known_hash=item.known_hash,
                fname=item.file_name,
                path=folder,
                progressbar=progress,
            )
        except Exception as err:  # requests' network errors, pooch's hash mismatch, disk errors
            raise DataError(
                f"downloading {item.url} into {folder} failed ({type(err).__name__}: {err}); "
                "nothing half-downloaded was kept"
            ) from err
    located, _ = find_in(info, folder)
    if located is None:  # pragma: no cover - the files were just written
        raise DataError(f"downloaded {info.title} into {folder}, but the files are not there")
    return dataclasses.replace(located, found_by="download")


def forget_download(info: DatasetInfo) -> None:
    """Delete downloaded files that failed a check after the download, so none is reused."""
    folder = cache_dir() / info.name
    for item in info.downloads:
        (folder / item.file_name).unlink(missing_ok=True)
