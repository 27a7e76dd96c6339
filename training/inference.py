"""Run a shipped ONNX model the way serving does: shared preprocessing, then ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.core.runtime import input_size_of
from training.features import load_image

BATCH = 32


def run_onnx(model_path: Path, paths: Sequence[Path], outputs: Sequence[str] = ("probabilities",),
             batch: int = BATCH) -> dict[str, np.ndarray]:
    """{output name: stacked array} for the images at `paths`, in order."""
    import onnxruntime as ort

    if not Path(model_path).is_file():
        raise FileNotFoundError(f"ONNX model not found: {model_path}")
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    # Images are resized to the model's own input size, as serving does (ModelRuntime.input_size).
    size = input_size_of(session.get_inputs()[0].shape, Path(model_path))
    collected: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for start in range(0, len(paths), batch):
        images = np.stack([load_image(p, size=size) for p in paths[start:start + batch]])
        for name, value in zip(outputs, session.run(list(outputs), {"input": images}), strict=True):
            collected[name].append(value)
    return {name: np.concatenate(values) for name, values in collected.items()}
