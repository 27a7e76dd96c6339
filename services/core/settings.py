"""Serving settings: environment variables prefixed DRTECH_SERVING_, validated at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.core.imaging.limits import ImageLimits

MIB = 1024 * 1024


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity where the OS has one (Linux), else all."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class ImageLimitSettings(BaseSettings):
    """What an uploaded image may be in pixels: one source for the model services, which refuse the
    rest, and the gateway, which checks uploads against the same limits before storing or sending
    them. Read from the shared DRTECH_MAX_IMAGE_PIXELS / DRTECH_MIN_IMAGE_SIDE, or the model
    services' own DRTECH_SERVING_ names (which win where both are set)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    max_image_pixels: int = Field(
        default=ImageLimits().max_pixels,
        gt=0,
        validation_alias=AliasChoices("DRTECH_SERVING_MAX_IMAGE_PIXELS", "DRTECH_MAX_IMAGE_PIXELS"),
    )
    min_image_side: int = Field(
        default=ImageLimits().min_side,
        ge=1,
        validation_alias=AliasChoices("DRTECH_SERVING_MIN_IMAGE_SIDE", "DRTECH_MIN_IMAGE_SIDE"),
    )

    def pixel_limits(self, max_bytes: int) -> ImageLimits:
        """The limits an image is checked against, with the caller's byte limit."""
        return ImageLimits(max_bytes, max_pixels=self.max_image_pixels, min_side=self.min_image_side)


class ServingSettings(ImageLimitSettings):
    model_config = SettingsConfigDict(env_prefix="DRTECH_SERVING_", extra="ignore")

    # Serve the model in this folder instead of services/<task>/model (e.g. a mounted volume).
    model_dir: Path | None = None
    host: str = "127.0.0.1"          # 0.0.0.0 in a container
    port: int | None = Field(default=None, ge=0, le=65535)   # None: the task's default port; 0: any free port
    # One limit for every gRPC message, shared with clients (docs/architecture.md).
    max_message_bytes: int = Field(
        default=20 * MIB,
        gt=0,
        validation_alias=AliasChoices("DRTECH_SERVING_MAX_MESSAGE_BYTES", "DRTECH_MAX_MESSAGE_BYTES"),
    )
    # The largest image in bytes, leaving room for the rest of the request (pixels and sides:
    # ImageLimitSettings, shared with the gateway).
    max_image_bytes: int = Field(default=20 * MIB - 64 * 1024, gt=0)
    # Pixels decoded at once across the worker threads (services/core/pixel_budget.py): one image of
    # the largest size at a time (550-750 MB to decode, measured), ordinary photos side by side.
    max_decoding_pixels: int = Field(default=64_000_000, gt=0)
    grace_seconds: float = Field(default=10.0, ge=0)     # in-flight calls get this long on SIGTERM
    # How inference uses the cores. Default (both 0): one model worker per core, each running
    # single-threaded, side by side; on CPU that gives more images/s than one run over every core
    # (no waiting on the slowest thread of each layer; `make bench` measures both). Setting only
    # intra_op_threads (e.g. = the pod's CPU limit) gives one worker with that many threads.
    intra_op_threads: int = Field(default=0, ge=0)      # runtime threads per inference run
    model_workers: int = Field(default=0, ge=0)         # model runs side by side
    # Which runtime runs the model (chosen by `make bench`, see benchmarks/README.md):
    # onnxruntime (default: model.onnx, CPU or GPU providers), litert (model.tflite in the model
    # folder, checked against model.onnx at load), tensorflow (baseline only; needs TensorFlow).
    runtime: Literal["onnxruntime", "litert", "tensorflow"] = "onnxruntime"
    # ONNX Runtime session options: graph optimisation level and the CPU memory arena.
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    memory_arena: bool = True
    # Idle ONNX Runtime threads spin-wait for work (multi-threaded runs only). Off: under load the
    # spinning took cores from the threads decoding the next requests.
    intra_op_spinning: bool = False
    # ONNX Runtime execution providers in order of preference, comma-separated,
    # e.g. "CUDAExecutionProvider,CPUExecutionProvider" on a GPU node.
    providers: str = "CPUExecutionProvider"
    # Providers the model must actually run on, comma-separated (the GPU component: CUDA). ONNX
    # Runtime falls back to the next provider when one cannot start (a driver too old, CUDA or cuDNN
    # libraries missing), and a GPU pod would then serve from one CPU thread while holding its GPU:
    # with this set it fails to start instead.
    required_providers: str = ""
    worker_threads: int = Field(default=8, ge=1)        # concurrent gRPC calls handled
    warmup_runs: int = Field(default=3, ge=1)
    # Refuse images the model's gate (training/gate.py, the `ood_ratio` output) says it cannot read:
    # a document sent as a chest X-ray. Off diagnoses anything, as before gates existed (tests of
    # other behaviour that upload stand-in images; measuring a model on images of any kind).
    refuse_unreadable: bool = True
    # Calls that arrive while the model is busy run together, up to this many (1 = one at a time).
    # Off by default: on CPU, MobileNetV2 costs the same per image at batch 1, 4 or 8 (measured
    # 8.0 / 8.9 / 8.5 ms per image, one thread); raise it on a GPU, where batches are cheaper.
    max_batch_size: int = Field(default=1, ge=1)
    # With batching on, how long the batch worker waits for more calls before running a partial
    # batch. 0: never wait (a lone call pays no extra latency).
    max_batch_wait_ms: float = Field(default=0.0, ge=0)
    metrics_port: int = Field(default=0, ge=0, le=65535)   # Prometheus /metrics over HTTP; 0 = off
    # A second gRPC port that serves only grpc.health.v1, on threads of its own, for Kubernetes'
    # probes: Diagnose calls waiting for the pixel budget can hold every worker thread of the main
    # port, and a probe queued behind them would fail and restart a busy pod. 0 = off.
    health_port: int = Field(default=0, ge=0, le=65535)
    # Each client connection is closed (HTTP/2 GOAWAY; gRPC adds +-10% jitter) after this long, so
    # clients look the name up again and spread over pods the autoscaler added: a new pod gets calls
    # within about this long. Reconnecting costs one plaintext TCP + HTTP/2 handshake, nothing at 30 s;
    # at 300 s an HPA scale-up did nothing for minutes (docs/architecture.md).
    max_connection_age_seconds: float = Field(default=30.0, gt=0)
    # Calls in flight on a closed connection get this long to finish: the gateway's Diagnose
    # deadline (DRTECH_GATEWAY_DIAGNOSE_TIMEOUT_S, 30 s), so closing one never cuts a call short.
    max_connection_age_grace_seconds: float = Field(default=30.0, ge=0)

    def image_limits(self) -> ImageLimits:
        return self.pixel_limits(self.max_image_bytes)

    def inference_plan(self, cores: int | None = None) -> tuple[int, int]:
        """(model workers, threads per run) from model_workers and intra_op_threads; see above."""
        cores = cores or usable_cores()
        if self.model_workers:
            return self.model_workers, self.intra_op_threads or 1
        if self.intra_op_threads:
            return 1, self.intra_op_threads
        if any(name != "CPUExecutionProvider" for name in self.provider_list):
            # An accelerator runs one batch at a time anyway: one worker (0 = the runtime's default
            # threads for CPU fallback ops); raise max_batch_size there instead.
            return 1, 0
        return cores, 1

    @property
    def provider_list(self) -> list[str]:
        return [name.strip() for name in self.providers.split(",") if name.strip()]

    @property
    def required_provider_list(self) -> list[str]:
        return [name.strip() for name in self.required_providers.split(",") if name.strip()]
