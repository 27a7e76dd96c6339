"""Prometheus metrics of a model service, labelled by task so several services can share a process (tests)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.common.stage_cpu import STAGE_CPU_HELP, STAGE_CPU_NAME

REQUESTS = Counter(
    "drtech_serving_requests_total",
    "gRPC calls handled, by final status code.",
    ["task", "method", "code"],
)
LATENCY = Histogram(
    "drtech_serving_request_seconds",
    "Time to answer a gRPC call, decoding and heatmap included.",
    ["task", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
INFERENCE = Histogram(
    "drtech_serving_inference_seconds",
    "Time ONNX Runtime spent on one batch.",
    ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_SIZE = Histogram(
    "drtech_serving_batch_size",
    "Requests that shared one model run.",
    ["task"],
    buckets=(1, 2, 4, 8, 16, 32),
)
IN_FLIGHT = Gauge("drtech_serving_in_flight_requests", "gRPC calls being handled now.", ["task"])
READY = Gauge("drtech_serving_model_ready", "1 once the model is loaded and warmed, 0 otherwise.", ["task"])
# decode, preprocess, model, respond, heatmap (services/core/service.py); benchmarks/cpu_cost.py reads it.
STAGE_CPU = Counter(STAGE_CPU_NAME, STAGE_CPU_HELP, ["task", "stage"])
