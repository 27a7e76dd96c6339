"""What a heatmap costs: Diagnose latency with and without explain=true on the shipped models.

    python -m benchmarks.heatmap_cost [--calls 60]

Starts each model service in this process (the real serving core, ONNX Runtime, one intra-op
thread) and calls it through a real gRPC stub with a real image of its kind (../shared/data, else a
generated one), alternating plain and explained calls so machine load affects both alike. A
2048x2048 chest X-ray shows how the cost grows with the upload: the overlay PNG is rendered at the
upload's own size. Prints one JSON line per case. Not a test.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import grpc
from PIL import Image

from protos.drtech.v1 import diagnosis_pb2, diagnosis_pb2_grpc
from services.bone.spec import SPEC as BONE
from services.core.server import start_server
from services.core.settings import ServingSettings
from services.core.spec import TaskSpec
from services.pneumonia.spec import SPEC as PNEUMONIA
from services.skin.spec import SPEC as SKIN
from tests.support import sample_image_bytes

CASES: list[tuple[TaskSpec, str, int | None]] = [
    (PNEUMONIA, "chest_xray", None),
    (SKIN, "skin_lesion", None),
    (BONE, "bone_xray", None),
    (PNEUMONIA, "chest_xray", 2048),
]


def resized_jpeg(data: bytes, side: int) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("L").resize((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(fraction * len(ordered)) - 1)]


def measure(spec: TaskSpec, data: bytes, calls: int) -> dict:
    settings = ServingSettings(intra_op_threads=1, worker_threads=2, warmup_runs=3, grace_seconds=0, metrics_port=0)
    server = start_server(spec, settings, port=0)
    timings: dict[bool, list[float]] = {False: [], True: []}
    png_bytes = 0
    try:
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        with grpc.insecure_channel(server.target, options=options) as channel:
            stub = diagnosis_pb2_grpc.DiagnosisServiceStub(channel)
            for explain in (False, True, False, True):   # warm both paths
                stub.Diagnose(diagnosis_pb2.DiagnoseRequest(image=data, explain=explain), timeout=60)
            for index in range(calls):
                for explain in (False, True) if index % 2 == 0 else (True, False):
                    started = time.perf_counter()
                    reply = stub.Diagnose(diagnosis_pb2.DiagnoseRequest(image=data, explain=explain), timeout=60)
                    timings[explain].append((time.perf_counter() - started) * 1000)
                    if explain:
                        png_bytes = len(reply.heatmap.png)
    finally:
        server.stop(grace=0)
    image = Image.open(io.BytesIO(data))
    plain, explained = statistics.median(timings[False]), statistics.median(timings[True])
    return {
        "model": spec.task,
        "image": f"{image.width}x{image.height}",
        "calls_each": calls,
        "plain_median_ms": round(plain, 1),
        "explain_median_ms": round(explained, 1),
        "explain_extra_median_ms": round(explained - plain, 1),
        "plain_p95_ms": round(percentile(timings[False], 0.95), 1),
        "explain_p95_ms": round(percentile(timings[True], 0.95), 1),
        "heatmap_png_bytes": png_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=60, help="calls of each kind per case (>= 50 to report)")
    args = parser.parse_args()
    for spec, kind, side in CASES:
        data = sample_image_bytes(kind)
        if side is not None:
            data = resized_jpeg(data, side)
        print(json.dumps(measure(spec, data, args.calls)), flush=True)


if __name__ == "__main__":
    main()
