"""Measure a model service as it runs: start-up to SERVING, resident memory, single-image latency.

    python -m services.core.measure --task pneumonia [--image path] [--calls 30]

Starts `python -m services.<task> --port 0` as a real process, times until it prints its ready
line (health SERVING), reads its resident memory from /proc, then times Diagnose calls one at a
time through a real stub (with and without a heatmap). Not a test; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc

from protos.drtech.v1 import diagnosis_pb2, diagnosis_pb2_grpc
from services.core.settings import ServingSettings
from services.registry import diagnosis_specs

ROOT = Path(__file__).resolve().parents[2]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _latencies(
    stub: diagnosis_pb2_grpc.DiagnosisServiceStub, image: bytes, calls: int, explain: bool
) -> dict:
    wall, inference = [], []
    for _ in range(calls):
        started = time.perf_counter()
        reply = stub.Diagnose(diagnosis_pb2.DiagnoseRequest(image=image, explain=explain), timeout=60)
        wall.append((time.perf_counter() - started) * 1000)
        inference.append(reply.inference_ms)
    wall.sort()
    return {
        "calls": calls,
        "wall_ms_p50": round(statistics.median(wall), 2),
        "wall_ms_p95": round(wall[max(0, int(0.95 * len(wall)) - 1)], 2),
        "inference_ms_p50": round(statistics.median(inference), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", required=True, choices=sorted(diagnosis_specs()))
    parser.add_argument("--image", type=Path, help="image to send (default: a generated 512x512 JPEG)")
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args(argv)

    if args.image:
        image = args.image.read_bytes()
    else:
        import io

        import numpy as np
        from PIL import Image

        pixels = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        image = buffer.getvalue()

    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", f"services.{args.task}", "--port", "0"],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()
        ready_seconds = time.perf_counter() - started
        if not line.startswith("listening on "):
            print(f"the {args.task} service did not start (exit {process.wait()})", file=sys.stderr)
            return 1
        target = line.removeprefix("listening on ").strip()
        rss_ready = _rss_mib(process.pid)
        with grpc.insecure_channel(target) as channel:
            stub = diagnosis_pb2_grpc.DiagnosisServiceStub(channel)
            plain = _latencies(stub, image, args.calls, explain=False)
            explained = _latencies(stub, image, args.calls, explain=True)
            info = stub.GetModelInfo(diagnosis_pb2.GetModelInfoRequest(), timeout=10)
        result = {
            "task": args.task,
            "model": f"{info.model.name} {info.model.version}",
            "seconds_to_serving": round(ready_seconds, 2),
            "rss_mib_when_serving": round(rss_ready, 1),
            "rss_mib_after_calls": round(_rss_mib(process.pid), 1),
            "image_bytes": len(image),
            "diagnose": plain,
            "diagnose_explain": explained,
            "cpu_count": os.cpu_count(),
            "model_workers_x_threads": ServingSettings().inference_plan(),
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main())
