"""LiteRT (the standalone TFLite interpreter, `ai-edge-litert`, no TensorFlow) as a serving runtime.

Selected with DRTECH_SERVING_RUNTIME=litert. It serves `model.tflite` from the model folder, which
must have one signature with one input [N, H, W, 3] and the outputs of the ONNX contract, named
`probabilities`, `cam` and the task's extras, or `output_0`, `output_1`, ... in that order (what
TFLiteConverter.from_keras_model names them). When the folder also holds the model.onnx it was
converted alongside, both are run on the same input at load and must agree (parity check), so a
stale or wrongly converted .tflite is refused instead of served.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

from services.core.runtime import (
    CAM, PROBABILITIES, ModelContractError, ModelRuntime, Prediction, input_size_of,
)
from services.core.spec import TaskSpec

TFLITE_NAME = "model.tflite"
# Largest difference in any class probability between model.tflite and model.onnx.
PARITY_TOLERANCE = 1e-3


class LiteRtModel(ModelRuntime):
    """One interpreter per thread that runs it: an interpreter must not run on two threads at once."""

    def __init__(self, spec: TaskSpec, intra_op_threads: int = 0, model_path: Path | None = None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ModelContractError(
                "the litert runtime needs the ai-edge-litert package (pip install ai-edge-litert)"
            ) from None
        self.spec = spec
        self.path = Path(model_path or spec.model_dir / TFLITE_NAME)
        if not self.path.is_file():
            raise ModelContractError(
                f"{self.path} does not exist: the litert runtime needs a model.tflite next to model.onnx; "
                "serve this model with DRTECH_SERVING_RUNTIME=onnxruntime"
            )
        started = time.perf_counter()
        # 0 means every core, as for ONNX Runtime. XNNPACK is LiteRT's default CPU delegate.
        threads = intra_op_threads or os.cpu_count() or 1
        self._new_interpreter = lambda: Interpreter(model_path=str(self.path), num_threads=threads)
        self._local = threading.local()
        self.interpreter = self._new_interpreter()
        signatures = self.interpreter.get_signature_list()
        if len(signatures) != 1:
            raise ModelContractError(f"{self.path}: expected one signature, found {sorted(signatures)}")
        (name, io_names), = signatures.items()
        self._signature = name
        self._local.runner = self.interpreter.get_signature_runner(name)
        self.output_names = [PROBABILITIES, CAM, *spec.extra_outputs]
        inputs, outputs = list(io_names["inputs"]), sorted(io_names["outputs"])
        positional = [f"output_{index}" for index in range(len(self.output_names))]
        if sorted(self.output_names) == outputs:
            self._names = {name: name for name in self.output_names}
        elif positional == outputs:
            self._names = dict(zip(self.output_names, positional))
        else:
            raise ModelContractError(
                f"{self.path}: signature {name!r} has outputs {outputs}; expected {self.output_names} "
                f"or {positional}"
            )
        if len(inputs) != 1:
            raise ModelContractError(f"{self.path}: signature {name!r} has inputs {inputs}; expected one")
        self._input = inputs[0]
        self.input_size = input_size_of(
            [int(side) for side in self._local.runner.get_input_details()[self._input]["shape"]], self.path)
        self.load_seconds = time.perf_counter() - started
        self.providers = ["LiteRT/XNNPACK"]
        self._check_parity()

    def run(self, batch: np.ndarray) -> Prediction:
        """Run a preprocessed float32 batch (N, H, W, 3); the runner resizes for a new batch size."""
        runner = getattr(self._local, "runner", None)
        if runner is None:
            runner = self._local.runner = self._new_interpreter().get_signature_runner(self._signature)
        values = runner(**{self._input: np.ascontiguousarray(batch, dtype=np.float32)})
        named = {name: values[key] for name, key in self._names.items()}
        return Prediction(
            probabilities=named.pop(PROBABILITIES),
            cam=named.pop(CAM),
            extra=named,
        )

    def _check_parity(self) -> None:
        onnx_path = self.spec.model_dir / "model.onnx"
        if not onnx_path.is_file():
            return
        from services.core.runtime import OnnxModel

        reference = OnnxModel(self.spec, intra_op_threads=1, model_path=onnx_path)
        if reference.input_size != self.input_size:
            raise ModelContractError(
                f"{self.path} takes {self.input_size} images but {onnx_path} takes {reference.input_size}; "
                "re-export both from the same model"
            )
        width, height = self.input_size
        batch = np.random.default_rng(0).uniform(-1, 1, (2, height, width, 3)).astype(np.float32)
        expected, got = reference.run(batch), self.run(batch)
        difference = float(np.max(np.abs(expected.probabilities - got.probabilities)))
        if not difference <= PARITY_TOLERANCE:
            raise ModelContractError(
                f"{self.path} disagrees with {onnx_path}: probabilities differ by up to {difference:.2g} "
                f"(tolerance {PARITY_TOLERANCE}); re-export both from the same model"
            )
