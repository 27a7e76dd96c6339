"""The shipped ONNX model, loaded once with ONNX Runtime and checked against the model file contract.

Contract (docs/architecture.md): input `input` float32 [N, H, W, 3]; outputs `probabilities`
[N, C] and `cam` [N, h, w, C]; plus any task-specific extra outputs named in the TaskSpec.
H and W are fixed in the model file and are the size serving resizes images to (`input_size`).

ONNX Runtime is the default runtime (DRTECH_SERVING_RUNTIME=onnxruntime): it runs the shipped
model.onnx on CPU or, with DRTECH_SERVING_PROVIDERS, a GPU from the same file. `open_model` also
offers LiteRT (services/core/litert_runtime.py, where a model.tflite exists) and TensorFlow
(services/core/tensorflow_runtime.py, a benchmark baseline that needs the training extra).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.core.spec import GATE_OUTPUT, TaskSpec

INPUT_NAME = "input"
PROBABILITIES = "probabilities"
CAM = "cam"

logger = logging.getLogger(__name__)


class ModelContractError(RuntimeError):
    """The model file is missing or does not match what the TaskSpec says it serves."""


@dataclass(frozen=True)
class Prediction:
    probabilities: np.ndarray          # (N, C), softmax in SPEC.labels order
    cam: np.ndarray                    # (N, h, w, C)
    extra: dict[str, np.ndarray]       # extra output name -> (N, ...)
    gate: np.ndarray | None = None     # (N, 1) gate ratio (> 1: not what the model reads), if gated


RUNTIMES = ("onnxruntime", "litert", "tensorflow")
# ONNX Runtime graph optimisation levels by setting name.
GRAPH_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ModelRuntime:
    """What every runtime backend provides: `run` a batch, and a checked `warm_up`.

    `run` is only ever called from one thread at a time (the Batcher's worker).
    """

    spec: TaskSpec
    path: Path
    providers: list[str]
    load_seconds: float
    input_size: tuple[int, int]        # (width, height) of the model's input, read from the model file

    def run(self, batch: np.ndarray) -> Prediction:
        raise NotImplementedError

    def warm_up(self, runs: int = 3) -> float:
        """Run dummy batches so the first real request does not pay for lazy initialisation.

        Returns the seconds it took.
        """
        width, height = self.input_size
        dummy = np.zeros((1, height, width, 3), dtype=np.float32)
        started = time.perf_counter()
        for _ in range(max(runs, 1)):
            prediction = self.run(dummy)
        # Shapes the graph left symbolic are checked here, on a real run.
        classes = len(self.spec.labels)
        if prediction.probabilities.shape != (1, classes) or prediction.cam.shape[-1] != classes:
            raise ModelContractError(
                f"{self.path}: warm-up gave probabilities {prediction.probabilities.shape} and cam "
                f"{prediction.cam.shape}; expected (1, {classes}) and (1, h, w, {classes})"
            )
        if not np.all(np.isfinite(prediction.probabilities)):
            raise ModelContractError(f"{self.path}: warm-up produced non-finite probabilities")
        return time.perf_counter() - started


def input_size_of(shape: list, path: Path) -> tuple[int, int]:
    """(width, height) from a model input shape [N, H, W, 3] whose H and W are fixed numbers."""
    if len(shape) != 4 or shape[3] != 3 or not all(isinstance(side, int) and side > 0 for side in shape[1:3]):
        raise ModelContractError(
            f"{path}: input shape {list(shape)}, expected [N, H, W, 3] with fixed H and W"
        )
    return int(shape[2]), int(shape[1])


def open_model(
    spec: TaskSpec,
    runtime: str = "onnxruntime",
    intra_op_threads: int = 0,
    providers: list[str] | None = None,
    graph_optimization: str = "all",
    memory_arena: bool = True,
    spinning: bool = True,
) -> ModelRuntime:
    """Load the task's model with the chosen runtime (imported only when chosen)."""
    if runtime == "onnxruntime":
        return OnnxModel(
            spec, intra_op_threads, providers,
            graph_optimization=graph_optimization, memory_arena=memory_arena, spinning=spinning,
        )
    if runtime == "litert":
        from services.core.litert_runtime import LiteRtModel

        return LiteRtModel(spec, intra_op_threads)
    if runtime == "tensorflow":
        from services.core.tensorflow_runtime import TensorFlowModel

        return TensorFlowModel(spec, intra_op_threads)
    raise ModelContractError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def usable_providers(requested: list[str] | None) -> list[str]:
    """The requested execution providers this ONNX Runtime build has, in order; CPU if none asked."""
    requested = requested or ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    usable = [name for name in requested if name in available]
    missing = [name for name in requested if name not in available]
    if not usable:
        raise ModelContractError(
            f"none of the execution providers {requested} is available (have {available})"
        )
    if missing:
        logger.warning("execution providers %s are not available here; using %s", missing, usable)
    return usable


class OnnxModel(ModelRuntime):
    """One InferenceSession for the process. `run` is safe to call from several threads at once."""

    def __init__(
        self,
        spec: TaskSpec,
        intra_op_threads: int = 0,
        providers: list[str] | None = None,
        model_path: Path | None = None,
        graph_optimization: str = "all",
        memory_arena: bool = True,
        spinning: bool = True,
    ) -> None:
        self.spec = spec
        self.path = Path(model_path or spec.model_path)
        if not self.path.is_file():
            raise ModelContractError(
                f"model file {self.path} does not exist; train and export the {spec.task} model"
            )
        options = ort.SessionOptions()
        if graph_optimization not in GRAPH_OPTIMIZATION:
            raise ModelContractError(
                f"unknown graph optimisation level {graph_optimization!r}; choose one of {list(GRAPH_OPTIMIZATION)}"
            )
        options.graph_optimization_level = GRAPH_OPTIMIZATION[graph_optimization]
        # The arena keeps activation buffers between runs (faster); off trades speed for memory.
        options.enable_cpu_mem_arena = memory_arena
        # Idle intra-op threads spin waiting for work by default: fastest for the model alone, but
        # the spinning takes cores from the threads decoding the next requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        # 0 lets ONNX Runtime use every core; in a pod set it to the CPU limit.
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3   # errors only; ONNX Runtime's warnings are not actionable here
        started = time.perf_counter()
        self.session = ort.InferenceSession(str(self.path), options, providers=usable_providers(providers))
        self.load_seconds = time.perf_counter() - started
        self.output_names = [PROBABILITIES, CAM, *spec.extra_outputs]
        self.providers = self.session.get_providers()
        self._check_contract()
        # A gated task's model refuses what it cannot read when its file has the gate's output; one
        # without it (exported, not yet gated: python -m training.gate) serves everything.
        self.gate_output = None
        if spec.gated and GATE_OUTPUT not in spec.extra_outputs:
            if GATE_OUTPUT in {node.name for node in self.session.get_outputs()}:
                self.gate_output = GATE_OUTPUT
                self.output_names.append(GATE_OUTPUT)
            else:
                logger.warning("%s has no %r output: the %s service will not refuse images it cannot read "
                               "(run python -m training.gate --task %s)", self.path, GATE_OUTPUT, spec.task, spec.task)

    def _check_contract(self) -> None:
        inputs = {node.name: node for node in self.session.get_inputs()}
        outputs = {node.name: node for node in self.session.get_outputs()}
        if INPUT_NAME not in inputs:
            raise ModelContractError(f"{self.path}: no input named {INPUT_NAME!r} (has {sorted(inputs)})")
        missing = [name for name in self.output_names if name not in outputs]
        if missing:
            raise ModelContractError(f"{self.path}: missing outputs {missing} (has {sorted(outputs)})")
        self.input_size = input_size_of(inputs[INPUT_NAME].shape, self.path)
        classes = outputs[PROBABILITIES].shape[-1]
        if isinstance(classes, int) and classes != len(self.spec.labels):
            raise ModelContractError(
                f"{self.path}: {classes} output classes but the {self.spec.task} spec has "
                f"{len(self.spec.labels)} labels"
            )

    def run(self, batch: np.ndarray) -> Prediction:
        """Run a preprocessed float32 batch (N, H, W, 3)."""
        feed = {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}
        values = self.session.run(self.output_names, feed)
        named = dict(zip(self.output_names, values))
        gate = named.pop(self.gate_output) if self.gate_output else None
        return Prediction(
            probabilities=named.pop(PROBABILITIES),
            cam=named.pop(CAM),
            extra=named,
            gate=gate,
        )
