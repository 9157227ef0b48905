"""Classify image files with a trained run: ``tinyvision predict RUN IMAGE...``.

The model is rebuilt from ``RUN/model.pt`` alone (architecture, classes and the normalisation
it was trained with are stored there). Each image file, of any size and mode, becomes the
model's input in the steps below, the same ones the training data went through at the end:

1. read with Pillow (PNG, JPEG, BMP, GIF: first frame, TIFF, WebP, ...), turned upright by its
   EXIF orientation (phone photos);
2. 16-bit and floating-point greys are scaled to 0-255;
3. ``--invert``: every colour value v becomes 255 - v. Fashion-MNIST shows light garments on a
   black background, so a photo of clothes on a white (or light) background must be inverted;
   CIFAR-10 photos are taken as they are;
4. transparent areas become black (the Fashion-MNIST background), after any inversion;
5. colour: grey (Pillow's "L", ITU-R 601-2 luma) for a 1-channel model, "RGB" for a 3-channel
   model (a grey image then has three equal channels);
6. size (``--fit``): ``pad`` (the default) scales the longer side to the model's size and pads
   the shorter one with black, centred, keeping the proportions (Fashion-MNIST's own
   conversion); ``crop`` scales the shorter side and cuts the centre; ``stretch`` resizes to
   the model's size whatever the proportions. Resizing is bilinear, antialiased when shrinking
   (Pillow widens the filter by the scale factor);
7. pixels to [0, 1], then ``(x - mean) / std`` with the training set's per-channel statistics.

Limits: an image above ``MAX_PIXELS`` (150 megapixels, e.g. 12,247 x 12,247) is refused as too
large before it is decoded (Pillow's own "decompression bomb" guard is replaced by this stated
limit); one above ``LARGE_PIXELS`` is read with a note that it is decoded in full. An image
smaller than ``MIN_SIDE`` pixels on a side is classified with a warning: blown up to the
model's size it holds almost nothing to recognise.

The command classifies every readable file and reports each unreadable one (exit status 2
when there was any), so one bad file among many loses nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps

from tinyvision.errors import TinyVisionError

Fit = Literal["pad", "crop", "stretch"]
BATCH = 256  # images per forward pass: bounds memory for long file lists
# Decoding is the cost: 150 megapixels is ~450 MB as RGB, still fine on a laptop.
MAX_PIXELS = 150_000_000
LARGE_PIXELS = 50_000_000  # above this, say that the whole image is decoded (seconds)
MIN_SIDE = 8  # below this many pixels on a side the model sees little but interpolation


@dataclass(frozen=True)
class Prediction:
    file: str
    top: list[tuple[str, float]]  # (class, probability), most probable first
    notes: tuple[str, ...] = ()  # warnings about the file (tiny, very large)

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "class": self.top[0][0],
            "probability": self.top[0][1],
            "top": [{"class": name, "probability": p} for name, p in self.top],
            "notes": list(self.notes),
        }


def load_run_model(run_dir: str | Path) -> tuple[torch.nn.Module, dict]:
    """The run's final model (eval mode, CPU) and what ``model.pt`` records beside it."""
    from tinyvision.evaluate import load_saved_model
    from tinyvision.runs import RunFolder

    run = RunFolder.open(run_dir)
    try:
        return load_saved_model(run)
    except TinyVisionError:
        raise
    except Exception as err:  # torch.load's errors for a damaged file vary by version and damage
        raise TinyVisionError(
            f"{run.model_path} cannot be read ({type(err).__name__}: {err}); it is damaged or "
            "not a tinyvision model file"
        ) from None


def read_image(
    path: str | Path,
    in_chans: int,
    image_size: tuple[int, int],
    *,
    invert: bool = False,
    fit: Fit = "pad",
    notes: list[str] | None = None,
) -> torch.Tensor:
    """The image file ``path`` as uint8 [in_chans, H, W], converted as the module docstring says.

    Warnings about the image (tiny, very large) are appended to ``notes`` when it is given.
    """
    path = Path(path)
    notes = notes if notes is not None else []
    if not path.is_file():
        raise TinyVisionError(
            f"{path}: no such file" if not path.exists() else f"{path}: not a file"
        )
    bomb_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our stated limit below replaces Pillow's warning and error
    try:
        with Image.open(path) as opened:
            width, height = opened.size  # from the header: nothing decoded yet
            if width * height > MAX_PIXELS:
                raise TooLarge(
                    f"{path}: too large to classify, {width}x{height} = "
                    f"{width * height / 1e6:.0f} megapixels; the limit is {MAX_PIXELS / 1e6:.0f} "
                    "megapixels (tinyvision.predict.MAX_PIXELS): shrink it first"
                )
            opened.seek(0)  # animations and multi-page files: the first frame
            image = ImageOps.exif_transpose(opened)  # also forces the full decode
            image.load()
    except TooLarge as err:
        raise TinyVisionError(str(err)) from None
    except Exception as err:  # Pillow's decoders raise OSError, SyntaxError, ValueError, ...
        raise TinyVisionError(
            f"{path}: not an image Pillow can read ({type(err).__name__}: {err}); "
            "give PNG, JPEG, BMP, GIF, TIFF or WebP files"
        ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
    if width * height > LARGE_PIXELS:
        notes.append(
            f"large image, {width}x{height} ({width * height / 1e6:.0f} megapixels): decoded in "
            f"full and shrunk to {image_size[1]}x{image_size[0]}"
        )
    if min(width, height) < MIN_SIDE:
        notes.append(
            f"tiny image, {width}x{height} pixels (under {MIN_SIDE} on a side): blown up to the "
            f"model's {image_size[1]}x{image_size[0]}, it holds almost nothing to recognise; "
            "the prediction means little"
        )
    try:
        image = _convert(image, in_chans, image_size, invert=invert, fit=fit)
    except (OSError, ValueError) as err:  # a mode Pillow cannot convert, e.g. LAB or HSV
        raise TinyVisionError(
            f"{path}: its {image.mode} image cannot be converted ({err}); save it as RGB or grey"
        ) from None
    array = np.asarray(image, dtype=np.uint8)
    # grey [H, W] -> [1, H, W]; colour [H, W, C] -> [C, H, W]
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    if array.shape[0] != in_chans:
        raise TinyVisionError(f"{path}: a model with {in_chans} input channels is not supported")
    return torch.from_numpy(array.copy())


class TooLarge(Exception):
    """Raised inside ``read_image`` (and turned into a TinyVisionError there)."""


def _convert(
    image: Image.Image, in_chans: int, image_size: tuple[int, int], *, invert: bool, fit: Fit
) -> Image.Image:
    """Steps 2-6 of the module docstring: the image as the model's mode and size."""
    image = _to_8bit(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if image.mode == "L" and in_chans == 1 and not has_alpha and not invert:
        # Grey already: the round trip through RGB gives the same pixels (the luma weights sum
        # to one) and would cost a huge image three times its memory.
        return _fit(image, image_size, fit)
    image = image.convert("RGBA" if has_alpha else "RGB")
    if invert:  # colour values only: transparency stays where it was
        *colour, alpha = image.split() if has_alpha else (*image.split(), None)
        colour = ImageOps.invert(Image.merge("RGB", colour)).split()
        image = Image.merge("RGBA", (*colour, alpha)) if has_alpha else Image.merge("RGB", colour)
    if has_alpha:  # transparent areas become the black background
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, image).convert("RGB")
    if in_chans == 1:
        image = image.convert("L")
    return _fit(image, image_size, fit)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit ("I;16", or "I" holding 16-bit values) and float ("F") greys as 8-bit "L".

    Pillow's own convert("L") clips such values at 255, which turns most of an image white.
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if image.mode.startswith("I;16") or values.max() > 255 else 1.0
        return Image.fromarray(np.clip(values / scale + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.max() <= 1.0 else 1.0  # [0, 1] floats, else already 0-255
        return Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8), "L")
    return image


def _fit(image: Image.Image, size: tuple[int, int], fit: Fit) -> Image.Image:
    height, width = size
    bilinear = Image.Resampling.BILINEAR  # antialiased when shrinking: the filter widens
    if fit == "stretch":
        return image.resize((width, height), bilinear)
    if fit == "crop":
        return ImageOps.fit(image, (width, height), bilinear)
    if fit == "pad":
        scale = min(width / image.width, height / image.height)
        inner = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        canvas = Image.new(image.mode, (width, height), 0)  # black in every mode used here
        canvas.paste(
            image.resize(inner, bilinear), ((width - inner[0]) // 2, (height - inner[1]) // 2)
        )
        return canvas
    raise ValueError(f"fit must be pad, crop or stretch (got {fit!r})")


@torch.inference_mode()
def predict_files(
    run_dir: str | Path,
    files: list[str | Path],
    *,
    top_k: int = 1,
    invert: bool = False,
    fit: Fit = "pad",
    unreadable: list[str] | None = None,
) -> list[Prediction]:
    """Classify ``files`` with the run's model.

    An unreadable file raises ``TinyVisionError`` before anything is classified, unless
    ``unreadable`` is a list: then its message is appended there and the other files are
    classified (what the command does).
    """
    if top_k < 1:
        raise TinyVisionError(f"--top-k must be at least 1 (got {top_k})")
    model, saved = load_run_model(run_dir)
    classes = list(saved["classes"])
    in_chans, image_size = saved["in_chans"], tuple(saved["image_size"])
    read, notes = [], []
    for f in files:
        file_notes: list[str] = []
        try:
            image = read_image(f, in_chans, image_size, invert=invert, fit=fit, notes=file_notes)
        except TinyVisionError as err:
            if unreadable is None:
                raise
            unreadable.append(str(err))
            continue
        read.append((f, image))
        notes.append(tuple(file_notes))
    if not read:
        return []
    files = [f for f, _ in read]
    images = torch.stack([image for _, image in read])
    mean = torch.tensor(saved["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(saved["std"], dtype=torch.float32).view(1, -1, 1, 1)
    probabilities = []
    for start in range(0, len(images), BATCH):
        x = (images[start : start + BATCH].float() / 255 - mean) / std  # as the training loader
        probabilities.append(torch.softmax(model(x).float(), dim=1))
    probs = torch.cat(probabilities)
    k = min(top_k, len(classes))
    values, indices = probs.topk(k, dim=1)
    return [
        Prediction(str(f), [(classes[i], float(p)) for p, i in zip(v, ix.tolist(), strict=True)], n)
        for f, v, ix, n in zip(files, values.tolist(), indices, notes, strict=True)
    ]


def format_predictions(predictions: list[Prediction], *, as_json: bool = False) -> str:
    if as_json:
        return json.dumps([p.to_json() for p in predictions], indent=2)
    lines = []
    for prediction in predictions:
        if len(prediction.top) == 1:
            name, p = prediction.top[0]
            lines.append(f"{prediction.file}: {name} ({p:.1%})")
        else:
            lines.append(f"{prediction.file}:")
            width = max(len(name) for name, _ in prediction.top)
            lines += [f"  {name:<{width}}  {p:6.1%}" for name, p in prediction.top]
        lines += [f"  warning: {note}" for note in prediction.notes]
    return "\n".join(lines)
