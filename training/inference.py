"""Run a shipped ONNX model the way serving does: serving's decoding and preprocessing, then ONNX
Runtime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.core.errors import InvalidImage
from services.core.imaging import ImageLimits, read_image
from services.core.preprocessing import draft_size_for, to_model_input
from services.core.runtime import input_size_of

BATCH = 32


def serving_input(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The model input a model service makes of the file at `path` (services/core/service.py):
    decoded by services.core.imaging (EXIF orientation, 16-bit stretch, DICOM, JPEG draft decoding
    to twice the input size), then resized and scaled. Training decodes the same way at full size
    (training.features.decoded), which gives the same input except where draft decoding applies
    (JPEGs over twice the input size: Kermany's chest X-rays)."""
    try:
        decoded = read_image(Path(path).read_bytes(), None, ImageLimits(), draft_size_for(size))
    except InvalidImage as error:   # a ValueError: name the file it is about
        raise InvalidImage(f"{path}: {error}") from None
    return to_model_input(decoded.image, size)


def run_onnx(model_path: Path, paths: Sequence[Path], outputs: Sequence[str] = ("probabilities",),
             batch: int = BATCH) -> dict[str, np.ndarray]:
    """{output name: stacked array} for the images at `paths`, in order."""
    import onnxruntime as ort

    if not Path(model_path).is_file():
        raise FileNotFoundError(f"ONNX model not found: {model_path}")
    try:
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        # Images are resized to the model's own input size, as serving does (ModelRuntime.input_size).
        size = input_size_of(session.get_inputs()[0].shape, Path(model_path))
    except Exception as error:  # noqa: BLE001 - ONNX Runtime's own exception types, and ModelContractError
        raise ValueError(f"{model_path} is not a model this runtime can serve "
                         f"({type(error).__name__}: {error})") from None
    missing = [name for name in outputs if name not in {o.name for o in session.get_outputs()}]
    if missing:
        extra = (" (a bone model trained without KL grades, e.g. on MURA, cannot be scored on knee data)"
                 if "kl_probabilities" in missing else "")
        raise ValueError(f"{model_path} has no output {', '.join(missing)}{extra}")
    collected: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for start in range(0, len(paths), batch):
        images = np.stack([serving_input(p, size) for p in paths[start:start + batch]])
        for name, value in zip(outputs, session.run(list(outputs), {"input": images}), strict=True):
            collected[name].append(value)
    return {name: np.concatenate(values) for name, values in collected.items()}
