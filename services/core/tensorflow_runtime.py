"""TensorFlow as a serving runtime: the "TensorFlow Serving way" baseline for `make bench`.

Selected with DRTECH_SERVING_RUNTIME=tensorflow. Loads `saved_model/` from the model folder once
(a SavedModel whose `serving_default` signature takes `input` and returns the ONNX contract's
outputs). Not part of the serving install: it needs TensorFlow (the training or bench extra).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from services.core.runtime import (
    CAM, INPUT_NAME, PROBABILITIES, ModelContractError, ModelRuntime, Prediction, input_size_of,
)
from services.core.spec import TaskSpec

SAVED_MODEL_DIR = "saved_model"


class TensorFlowModel(ModelRuntime):
    def __init__(self, spec: TaskSpec, intra_op_threads: int = 0, model_path: Path | None = None) -> None:
        try:
            import tensorflow as tf
        except ImportError:
            raise ModelContractError("the tensorflow runtime needs TensorFlow (pip install tensorflow-cpu)") from None
        self.spec = spec
        self.path = Path(model_path or spec.model_dir / SAVED_MODEL_DIR)
        if not (self.path / "saved_model.pb").is_file():
            raise ModelContractError(f"{self.path} is not a SavedModel folder")
        if intra_op_threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
            except RuntimeError:   # TensorFlow already started in this process (tests): keep its setting
                pass
        started = time.perf_counter()
        self._tf = tf
        self.signature = tf.saved_model.load(str(self.path)).signatures["serving_default"]
        _, inputs = self.signature.structured_input_signature
        if INPUT_NAME not in inputs:
            raise ModelContractError(f"{self.path}: serving_default has no input named {INPUT_NAME!r}")
        self.input_size = input_size_of(inputs[INPUT_NAME].shape.as_list(), self.path)
        self.load_seconds = time.perf_counter() - started
        self.providers = ["TensorFlow/CPU"]

    def run(self, batch: np.ndarray) -> Prediction:
        values = self.signature(**{INPUT_NAME: self._tf.constant(batch, dtype=self._tf.float32)})
        return Prediction(
            probabilities=values[PROBABILITIES].numpy(),
            cam=values[CAM].numpy(),
            extra={name: values[name].numpy() for name in self.spec.extra_outputs},
        )
