"""`tinyvision predict`: image files of any size and mode, written here by Pillow, classified by a
trained tiny run; unreadable files are refused with one line naming them."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import learnable_images, tiny_config_for
from PIL import Image

import tinyvision.loop
from tinyvision.cli import main
from tinyvision.engine import train
from tinyvision.errors import TinyVisionError
from tinyvision.predict import MAX_PIXELS, load_run_model, predict_files, read_image

SIZE = (28, 28)


@pytest.fixture(scope="module")
def run(tiny_fashion_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("predict-runs")
    config = tiny_config_for(tiny_fashion_dir, out, "data.batch_size=32")
    with pytest.MonkeyPatch.context() as patch:
        # Curves are not what these tests are about, and cost seconds (train() writes no report).
        patch.setattr(tinyvision.loop, "plot_curves", lambda run: None)
        return train(config).run_dir


@pytest.fixture(scope="module")
def garments() -> np.ndarray:
    """Ten 28x28 uint8 images like the tiny data set's, one per class (band at its height)."""
    return learnable_images(np.arange(10), np.random.default_rng(1)).astype(np.uint8)


def reference_probabilities(run: Path, images: np.ndarray) -> torch.Tensor:
    """What the model says about uint8 [N, 28, 28] images, normalised as the training loader."""
    model, saved = load_run_model(run)
    x = torch.from_numpy(images).float()[:, None] / 255
    x = (x - saved["mean"][0]) / saved["std"][0]
    with torch.inference_mode():
        return torch.softmax(model(x), dim=1)


# (name, how the garment image is saved, file suffix, largest allowed pixel difference after
# reading it back as the model's 28x28 grey input)
def grey_png(a: np.ndarray, path: Path) -> None:
    Image.fromarray(a, "L").save(path)


def rgb_jpeg(a: np.ndarray, path: Path) -> None:
    Image.fromarray(np.stack([a] * 3, axis=-1), "RGB").save(path, quality=95)


def rgba_png_transparent_background(a: np.ndarray, path: Path) -> None:
    # Garment opaque, background fully transparent over random colours that must not show.
    rgb = np.random.default_rng(0).integers(0, 256, (*a.shape, 3), dtype=np.uint8)
    rgb[a > 100] = a[a > 100, None]
    alpha = np.where(a > 100, 255, 0).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)


def larger_png(a: np.ndarray, path: Path) -> None:
    Image.fromarray(a.repeat(4, 0).repeat(4, 1), "L").save(path)  # 112x112: shrunk back 4x


def white_background_jpeg(a: np.ndarray, path: Path) -> None:
    Image.fromarray(255 - a, "L").convert("RGB").save(path, quality=95)  # needs --invert


def grey_16bit_png(a: np.ndarray, path: Path) -> None:
    Image.fromarray(a.astype(np.uint16) * 257).save(path)  # 16-bit PNG, values 0-65535


def palette_gif(a: np.ndarray, path: Path) -> None:
    Image.fromarray(a, "L").convert("P").save(path)


def wide_bmp(a: np.ndarray, path: Path) -> None:
    # 56 wide, 28 high: --fit pad shrinks it to 28x14 and pads 7 black rows above and below.
    Image.fromarray(np.hstack([a, a]), "L").save(path)


# tolerance: (largest, mean) |pixel difference| from the garment, after reading the file back
MODES = [
    ("grey PNG, 28x28", grey_png, ".png", (0, 0), {}),
    ("RGB JPEG (quality 95)", rgb_jpeg, ".jpg", (12, 3), {}),
    ("RGBA PNG, transparent background", rgba_png_transparent_background, ".png", (0, 0), {}),
    # Shrinking 4x averages the background noise away (antialiasing): only the mean is close.
    ("grey PNG, 112x112", larger_png, ".png", (60, 12), {}),
    (
        "RGB JPEG, white background, --invert",
        white_background_jpeg,
        ".jpg",
        (12, 3),
        {"invert": True},
    ),
    ("16-bit grey PNG", grey_16bit_png, ".png", (0, 0), {}),
    ("palette GIF", palette_gif, ".gif", (0, 0), {}),
]


@pytest.mark.parametrize(
    ("case", "save", "suffix", "tolerance", "options"), MODES, ids=[m[0] for m in MODES]
)
def test_any_mode_and_size_becomes_the_model_input(
    case, save, suffix, tolerance, options, garments, tmp_path, reliability
):
    image = garments[3]
    path = tmp_path / f"garment{suffix}"
    save(image, path)
    got = read_image(path, 1, SIZE, **options)
    assert got.shape == (1, 28, 28) and got.dtype == torch.uint8
    # Transparent pixels become black, whatever colour they hold.
    expected = np.where(image > 100, image, 0) if case.startswith("RGBA") else image
    diff = (got[0].int() - torch.from_numpy(expected).int()).abs().float()
    largest, mean = diff.max().item(), diff.mean().item()
    assert largest <= tolerance[0] and mean <= tolerance[1], (largest, mean)
    reliability.record(
        "predict",
        f"image file: {case}",
        f"read as the model's 1x28x28 input; pixel difference from the original: largest "
        f"{largest:.0f}, mean {mean:.1f} (allowed {tolerance[0]}, {tolerance[1]})",
    )


def test_other_proportions_are_padded_centred(garments, tmp_path):
    path = tmp_path / "wide.bmp"
    wide_bmp(garments[3], path)
    got = read_image(path, 1, SIZE)[0]
    assert (got[:7] == 0).all() and (got[21:] == 0).all()  # 7 black rows above and below
    assert got[7:21].float().mean() > 20  # the image itself, shrunk to 28x14
    stretched = read_image(path, 1, SIZE, fit="stretch")[0]
    assert stretched[:7].float().mean() > 20
    colour = read_image(path, 3, (32, 32))  # a CIFAR-10 model: three equal channels
    assert colour.shape == (3, 32, 32) and torch.equal(colour[0], colour[2])


def test_predictions_match_the_model_on_the_same_pixels(run, garments, tmp_path):
    files = []
    for label, image in enumerate(garments):
        files.append(tmp_path / f"{label}.png")
        Image.fromarray(image, "L").save(files[-1])
    predictions = predict_files(run, files, top_k=3)
    expected = reference_probabilities(run, garments)
    classes = load_run_model(run)[1]["classes"]
    for prediction, probs in zip(predictions, expected, strict=True):
        values, indices = probs.topk(3)
        assert [name for name, _ in prediction.top] == [classes[i] for i in indices]
        assert [p for _, p in prediction.top] == pytest.approx(values.tolist(), abs=1e-6)
    correct = sum(p.top[0][0] == classes[i] for i, p in enumerate(predictions))
    assert correct >= 5  # the tiny set is easy; chance is 1 in 10


def test_cli_prints_json_and_text(run, garments, tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    grey_png(garments[1], a)
    rgb_jpeg(garments[7], b)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinyvision",
            "predict",
            str(run),
            str(a),
            str(b),
            "--top-k",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["file"] for r in rows] == [str(a), str(b)]
    for row in rows:
        assert len(row["top"]) == 2 and row["class"] == row["top"][0]["class"]
        assert 1 >= row["top"][0]["probability"] >= row["top"][1]["probability"] >= 0
    assert main(["predict", str(run), str(a)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{a}: ") and line.endswith("%)")


def _truncated_jpeg(path: Path, garments: np.ndarray) -> None:
    rgb_jpeg(garments[0], path)
    path.write_bytes(path.read_bytes()[:300])


BAD_FILES = [
    ("missing file", lambda p, g: None, "no such file"),
    ("a folder", lambda p, g: p.mkdir(), "not a file"),
    ("empty file", lambda p, g: p.write_bytes(b""), "not an image Pillow can read"),
    ("text named .png", lambda p, g: p.write_text("hello"), "not an image Pillow can read"),
    (
        "PNG with garbage after its signature",
        lambda p, g: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
        "not an image Pillow can read",
    ),
    ("truncated JPEG", _truncated_jpeg, "not an image Pillow can read"),
]


@pytest.mark.parametrize(("case", "make", "expected"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_unreadable_file_exits_2_naming_it(
    case, make, expected, run, garments, tmp_path, capsys, reliability
):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    grey_png(garments[0], good)
    make(bad, garments)
    assert main(["predict", str(run), str(good), str(bad), str(good)]) == 2
    captured = capsys.readouterr()
    # The good files are classified and printed; the bad one is reported after them.
    printed = captured.out.strip().splitlines()
    assert [line.split(": ")[0] for line in printed] == [str(good), str(good)]
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"error: {bad}: {expected}")
    reliability.record(
        "predict",
        f"unreadable image among good ones: {case}",
        f"the good files printed, then exit 2, '{line}'",
    )


def test_bad_run_and_options_are_refused(run, garments, tmp_path, reliability):
    image = tmp_path / "x.png"
    grey_png(garments[0], image)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.toml").write_text((run / "config.toml").read_text())
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.toml").write_text((run / "config.toml").read_text())
    (damaged / "model.pt").write_bytes((run / "model.pt").read_bytes()[:1000])
    cases = [
        ("not a run folder", tmp_path, {}, "is not a tinyvision run folder"),
        ("run without model.pt (unfinished)", unfinished, {}, "has no model.pt"),
        ("truncated model.pt", damaged, {}, "cannot be read"),
        ("--top-k 0", run, {"top_k": 0}, "--top-k must be at least 1"),
    ]
    for case, folder, options, expected in cases:
        with pytest.raises(TinyVisionError, match=expected) as err:
            predict_files(folder, [image], **options)
        reliability.record("predict", case, f"exit 2, 'error: {err.value}'")


def test_a_tiny_image_is_classified_with_a_warning(run, tmp_path, capsys, reliability):
    path = tmp_path / "dot.png"
    Image.new("L", (1, 1), 200).save(path)
    assert main(["predict", str(run), str(path)]) == 0
    first, warning = capsys.readouterr().out.strip().splitlines()
    assert first.startswith(f"{path}: ")
    assert warning.startswith("  warning: tiny image, 1x1 pixels (under 8 on a side)")
    (prediction,) = predict_files(run, [path])
    assert prediction.to_json()["notes"] and "tiny image" in prediction.notes[0]
    reliability.record("predict", "a 1x1 image", f"classified, with '{warning.strip()}'")


@pytest.mark.parametrize("side", [12000, 14000])
def test_huge_images_meet_a_stated_limit_not_pillows_warning(
    side, run, tmp_path, capsys, reliability
):
    path = tmp_path / f"huge-{side}.png"
    Image.new("L", (side, side), 0).save(path, compress_level=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail here
        rc = main(["predict", str(run), str(path)])
    captured = capsys.readouterr()
    if side * side <= MAX_PIXELS:
        assert rc == 0
        note = captured.out.strip().splitlines()[1].strip()
        assert note.startswith(f"warning: large image, {side}x{side} (144 megapixels)")
        outcome = f"classified, no Pillow warning; '{note}'"
    else:
        assert rc == 2
        (line,) = captured.err.strip().splitlines()
        assert line == (
            f"error: {path}: too large to classify, {side}x{side} = 196 megapixels; the limit "
            "is 150 megapixels (tinyvision.predict.MAX_PIXELS): shrink it first"
        )
        outcome = f"exit 2, '{line}'"
    reliability.record("predict", f"a {side}x{side} PNG", outcome)
