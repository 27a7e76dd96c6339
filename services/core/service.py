"""DiagnosisService for any task: a TaskSpec plus its loaded model and model card.

Handlers raise domain errors (InvalidImage, ModelNotReady, ...) and never catch them; the
interceptor in services/core/interceptors.py turns them into status codes.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from protos.drtech.v1 import diagnosis_pb2, diagnosis_pb2_grpc
from services.core import heatmap, metrics
from services.core.batching import Batcher
from services.core.call_end import CallEnd
from services.core.errors import ModelNotReady, ServiceBusy, WrongKindOfImage
from services.core.imaging import SUPPORTED_MEDIA_TYPES, decode, inspect_image
from services.core.memory import release_after
from services.core.pixel_budget import PixelBudget
from services.core.preprocessing import draft_size_for, to_model_input
from services.core.runtime import ModelContractError, ModelRuntime, Prediction, open_model
from services.core.settings import ServingSettings
from services.core.spec import TaskSpec
from services.common.stage_cpu import StageCPU

logger = logging.getLogger(__name__)

# Extra model outputs named `<name>_probabilities` also surface as `<name>_grade` (their argmax),
# e.g. bone's kl_probabilities -> extra.kl_grade. Any other extra output is returned as a list.
PROBABILITIES_SUFFIX = "_probabilities"


@dataclass(frozen=True)
class LoadedModel:
    model: ModelRuntime
    card: dict[str, Any]
    name: str
    version: str


def load_model(spec: TaskSpec, settings: ServingSettings) -> LoadedModel:
    """Load the task's model and card, check them against the spec, and warm the model up."""
    if not spec.card_path.is_file():
        raise ModelContractError(f"model card {spec.card_path} does not exist")
    try:
        card = spec.load_card()
    except (OSError, ValueError) as error:
        raise ModelContractError(f"model card {spec.card_path} cannot be read: {error}") from error
    for key in ("name", "version"):
        if not card.get(key):
            raise ModelContractError(f"model card {spec.card_path} has no {key!r}")
    card_labels = card.get("labels")
    if isinstance(card_labels, list) and all(isinstance(code, str) for code in card_labels):
        if card_labels != spec.label_codes:
            raise ModelContractError(
                f"model card labels {card_labels} differ from the {spec.task} spec's {spec.label_codes}"
            )
    workers, threads = settings.inference_plan()
    model = open_model(
        spec,
        settings.runtime,
        intra_op_threads=threads,
        providers=settings.provider_list,
        graph_optimization=settings.graph_optimization,
        memory_arena=settings.memory_arena,
        spinning=settings.intra_op_spinning,
    )
    not_running = [name for name in settings.required_provider_list if name not in model.providers]
    if not_running:
        raise ModelContractError(
            f"the model runs on {', '.join(model.providers)}, not on the required {', '.join(not_running)}: "
            "ONNX Runtime could not start it here (on a GPU node: the driver, or the CUDA and cuDNN libraries)"
        )
    warm_seconds = model.warm_up(settings.warmup_runs)
    logger.info(
        "loaded %s model %s %s with %s on %s in %.2fs (%d workers x %d threads), %d warm-up runs in %.2fs",
        spec.task, card["name"], card["version"], settings.runtime, ",".join(model.providers),
        model.load_seconds, workers, threads, settings.warmup_runs, warm_seconds,
    )
    return LoadedModel(model=model, card=card, name=str(card["name"]), version=str(card["version"]))


def time_left(context: Any) -> float | None:
    """Seconds until the call's deadline; None without one (gRPC then reports a time ~300 years
    away, which a thread wait cannot take: OverflowError)."""
    remaining = context.time_remaining() if context is not None else None
    return None if remaining is None or remaining > 86_400 else remaining


class DiagnosisServicer(diagnosis_pb2_grpc.DiagnosisServiceServicer):
    """Answers UNAVAILABLE until `set_model` is called, then diagnoses with that model.

    Inference goes through one Batcher, so concurrent calls share model runs.
    """

    def __init__(self, spec: TaskSpec, settings: ServingSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.limits = settings.image_limits()
        self.decoding = PixelBudget(settings.max_decoding_pixels)
        self._loaded: LoadedModel | None = None
        self._batcher: Batcher | None = None
        # CPU per stage (decode, preprocess, model, respond, heatmap), each timed in its own thread.
        self.stages = StageCPU(metrics.STAGE_CPU, task=spec.task)

    def _run_model(self, model: ModelRuntime, batch: np.ndarray) -> Prediction:
        # The calling thread's CPU: all of a run's with one intra-op thread (the default layout).
        with self.stages.stage("model"):
            return model.run(batch)

    def set_model(self, loaded: LoadedModel) -> None:
        self._batcher = Batcher(
            lambda batch: self._run_model(loaded.model, batch),
            self.settings.max_batch_size,
            on_batch=self._record_batch,
            name=self.spec.task,
            max_wait_seconds=self.settings.max_batch_wait_ms / 1000.0,
            workers=self.settings.inference_plan()[0],
        )
        self._loaded = loaded

    def close(self) -> None:
        """Stop the batcher after the server has drained; later calls get UNAVAILABLE."""
        self._loaded = None
        if self._batcher is not None:
            self._batcher.close()

    def _record_batch(self, size: int, seconds: float) -> None:
        metrics.BATCH_SIZE.labels(self.spec.task).observe(size)
        metrics.INFERENCE.labels(self.spec.task).observe(seconds)

    @property
    def loaded(self) -> LoadedModel:
        loaded = self._loaded
        if loaded is None:
            raise ModelNotReady(f"the {self.spec.task} model is still loading; retry shortly")
        return loaded

    def Diagnose(
        self, request: diagnosis_pb2.DiagnoseRequest, context: Any
    ) -> diagnosis_pb2.DiagnoseResponse:
        loaded = self.loaded
        request_id = request.request_id or uuid.uuid4().hex
        # Draft-decode big JPEGs (model input size from the model file): much faster, nearly the
        # same model input after the resize in to_model_input.
        draft = draft_size_for(loaded.model.input_size)
        call_end = CallEnd()
        if context is not None:
            context.add_callback(call_end.set)
        with self.stages.stage("decode"):
            # The header only; decode() below continues from the file this opened.
            inspection = inspect_image(request.image, request.media_type, self.limits)
        pixels = inspection.pixels_to_decode(draft)
        try:
            held = self.decoding.acquire(pixels, timeout=time_left(context), call_end=call_end)
        except TimeoutError:
            raise ServiceBusy(f"the {self.spec.task} service is decoding other large images; retry shortly") from None
        try:
            with self.stages.stage("decode"):
                decoded = decode(inspection, draft)
            with self.stages.stage("preprocess"):
                model_input = to_model_input(decoded.image, loaded.model.input_size)
            media_type, original_size = decoded.media_type, (decoded.width, decoded.height)
            del decoded, inspection   # the decoded pixels are freed, and given back, before the budget is
        finally:
            self.decoding.release(held)
            release_after(pixels)
        batcher = self._batcher
        if batcher is None:
            raise ModelNotReady(f"the {self.spec.task} model is not loaded")
        batched = batcher.predict(model_input, timeout=time_left(context), call_end=call_end)
        prediction, inference_seconds = batched.prediction, batched.seconds
        if prediction.gate is not None and self.settings.refuse_unreadable:
            check_gate(self.spec, float(prediction.gate.ravel()[0]))

        with self.stages.stage("respond"):
            probabilities = prediction.probabilities[0].astype(np.float64)
            index = int(np.argmax(probabilities))
            label = self.spec.labels[index]
            response = diagnosis_pb2.DiagnoseResponse(
                request_id=request_id,
                label=label.code,
                label_display=label.display_name,
                confidence=float(probabilities[index]),
                probabilities=[
                    diagnosis_pb2.ClassProbability(
                        label=item.code, display_name=item.display_name, probability=float(p)
                    )
                    for item, p in zip(self.spec.labels, probabilities)
                ],
                model=diagnosis_pb2.ModelRef(name=loaded.name, version=loaded.version),
                inference_ms=inference_seconds * 1000.0,
            )
            response.extra.update(extra_fields(prediction))
        if request.explain:
            with self.stages.stage("heatmap"):
                width, height = heatmap.overlay_size(original_size)
                response.heatmap.CopyFrom(
                    diagnosis_pb2.Heatmap(
                        png=heatmap.overlay_png(prediction.cam[0, :, :, index], (width, height)),
                        width=width,
                        height=height,
                        method=heatmap.METHOD,
                        target_label=label.code,
                    )
                )
        logger.info(
            "diagnosed request %s: %s %.3f (%s %dx%d, inference %.1f ms%s)",
            request_id, label.code, probabilities[index], media_type, *original_size,
            inference_seconds * 1000.0, ", explained" if request.explain else "",
        )
        return response

    def GetModelInfo(
        self, request: diagnosis_pb2.GetModelInfoRequest, context: Any
    ) -> diagnosis_pb2.ModelInfo:
        loaded = self.loaded
        card = loaded.card
        width, height = loaded.model.input_size
        info = diagnosis_pb2.ModelInfo(
            model=diagnosis_pb2.ModelRef(name=loaded.name, version=loaded.version),
            task=self.spec.task,
            exam_type=self.spec.exam_type,
            exam_display_name=self.spec.exam_display_name,
            exam_summary=self.spec.exam_summary,
            labels=[
                diagnosis_pb2.LabelInfo(code=item.code, display_name=item.display_name)
                for item in self.spec.labels
            ],
            input=diagnosis_pb2.InputSpec(
                width=width,
                height=height,
                color_mode=self.spec.color_mode,
                media_types=list(SUPPORTED_MEDIA_TYPES),
                max_bytes=self.limits.max_bytes,
                min_side=self.limits.min_side,
            ),
            intended_use=_as_text(card.get("intended_use", "")),
            limitations=_as_list(card.get("limitations", [])),
            card_json=json.dumps(card, ensure_ascii=False, sort_keys=True),
        )
        if isinstance(card.get("metrics"), dict):
            info.metrics.update(_json_safe(card["metrics"]))
        return info


def check_gate(spec: TaskSpec, ratio: float) -> None:
    """Raise WrongKindOfImage unless the gate's ratio is at most 1 (NaN is refused too)."""
    if ratio <= 1.0:
        return
    reads = spec.reads or f"{spec.exam_type} images"
    raise WrongKindOfImage(
        f"this does not look like one of the {reads} the {spec.task} model reads (exam type {spec.exam_type}), "
        "so it was not diagnosed. Upload such an image, or choose the exam type that matches this one "
        "(auto lets Dr.Tech choose)."
    )


def extra_fields(prediction: Prediction) -> dict[str, Any]:
    """The task-specific outputs of the first batch item, as JSON-like values for a Struct."""
    extra: dict[str, Any] = {}
    for name, values in prediction.extra.items():
        row = np.asarray(values[0], dtype=np.float64)
        extra[name] = row.ravel().tolist()
        if name.endswith(PROBABILITIES_SUFFIX) and row.ndim == 1:
            extra[name[: -len(PROBABILITIES_SUFFIX)] + "_grade"] = int(np.argmax(row))
    return extra


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return str(value)


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    return [str(item) for item in value]


def _json_safe(value: Any) -> Any:
    """Struct takes only JSON types: round-trip through json so numpy scalars or tuples cannot break it."""
    return json.loads(json.dumps(value, default=str))

