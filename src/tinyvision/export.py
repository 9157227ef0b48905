"""Export a trained run to ONNX: ``tinyvision export RUN [--out FILE.onnx]``.

The ONNX model takes ``images``, float32 [batch, C, H, W] already normalised as in training,
``(pixels / 255 - mean) / std`` per channel (``tinyvision predict`` documents the conversion of
an image file), and returns ``logits``, float32 [batch, num_classes]. The batch dimension is
dynamic. The file's metadata (``metadata_props``) records the class names, mean, std, image
size and model, so a consumer needs nothing else.

After writing, the export is checked: onnxruntime runs it on a random batch and its logits
must match PyTorch's within ``ATOL`` (``--no-check`` skips this; it needs onnxruntime).
"""

from __future__ import annotations

import inspect
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from tinyvision.errors import TinyVisionError
from tinyvision.predict import load_run_model
from tinyvision.runs import atomic_write

OPSET = 17  # supported by onnxruntime >= 1.14 and by every torch from 2.4 on
ATOL = 1e-4  # float32 logits: kernels differ between runtimes only by rounding


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_abs_diff: float | None  # onnxruntime vs PyTorch on a random batch; None: not checked


def export_onnx(
    run_dir: str | Path, out: str | Path | None = None, *, check: bool = True
) -> ExportResult:
    """Write the run's model as ONNX to ``out`` (default ``RUN/model.onnx``), atomically."""
    try:
        import onnx
    except ImportError:
        raise TinyVisionError(
            "tinyvision export needs the onnx package: pip install 'tinyvision[export]'"
        ) from None
    model, saved = load_run_model(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / "model.onnx"
    if path.suffix != ".onnx":
        raise TinyVisionError(f"--out {path}: give a file name ending in .onnx")
    example = torch.zeros(2, saved["in_chans"], *saved["image_size"])  # 2: no batch-1 folding

    buffer = io.BytesIO()
    # The TorchScript-based exporter (dynamo=False): it exists in every torch this project
    # supports (2.4 up), needs no extra package, and takes `dynamic_axes`. torch >= 2.9 makes
    # the torch.export-based exporter the default, which also needs onnxscript; torch < 2.5
    # has no `dynamo` argument at all, hence the signature check.
    options = (
        {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    )
    try:
        with warnings.catch_warnings():
            # torch >= 2.9 warns that this exporter is deprecated: the user can do nothing about it.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            # Python-side shape checks in model code are traced as constants; harmless here,
            # and the check below runs the file at a batch size the trace never saw.
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                model,
                (example,),
                buffer,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
                **options,
            )
    except Exception as err:  # an operator without an ONNX form, say: a bug to report, not a crash
        raise TinyVisionError(
            f"exporting {saved['model_name']} to ONNX failed ({type(err).__name__}: {err})"
        ) from err

    proto = onnx.load_from_string(buffer.getvalue())
    metadata = {
        "model_name": saved["model_name"],
        "model_params": json.dumps(saved["model_params"]),
        "classes": json.dumps(list(saved["classes"])),
        "mean": json.dumps(list(saved["mean"])),
        "std": json.dumps(list(saved["std"])),
        "image_size": json.dumps(list(saved["image_size"])),
        "input": "images: float32 [batch, C, H, W], (pixels / 255 - mean) / std",
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    diff = max_abs_diff(model, data, tuple(example.shape[1:])) if check else None
    atomic_write(path, lambda file: file.write(data))  # only once it is known to be right
    return ExportResult(path, diff)


def max_abs_diff(model: torch.nn.Module, onnx_bytes: bytes, chw: tuple[int, ...]) -> float:
    """Largest |logit difference| between onnxruntime and PyTorch on a random batch of 3 (a size
    the export never saw); TinyVisionError if it exceeds ``ATOL``."""
    try:
        import onnxruntime
    except ImportError:
        raise TinyVisionError(
            "checking the export needs onnxruntime: pip install 'tinyvision[export]', or skip "
            "the check with --no-check"
        ) from None
    images = torch.randn(3, *chw, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(images).float().numpy()
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"images": images.numpy()})
    diff = float(abs(got - expected).max())
    if not diff <= ATOL:  # also catches NaN
        raise TinyVisionError(
            f"the ONNX export's logits differ from PyTorch's by up to {diff:.3g} (> {ATOL:g}); "
            "nothing was written; please report this"
        )
    return diff
