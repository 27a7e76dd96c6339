"""`make bench` machinery, run for about a second so it cannot rot (the full benchmark is not a test).

Also the latency fix the benchmark found: the gateway answers requests on a kept-alive connection
without Nagle's ~40 ms delay.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import httpx

from benchmarks.serving import (
    baseline_failure, ceiling, cpu_costs, grpc_loads, markdown, recheck_ceiling, sample_jpeg, targets,
)
from gateway.settings import GatewaySettings
from gateway.testing import start_gateway
from services.core.server import start_server
from services.core.settings import ServingSettings
from services.pneumonia.spec import SPEC as PNEUMONIA
from tests.serving_models import write_fixture_model
from tests.support import free_port


def test_bench_measures_a_real_service_and_reports_ratios_and_targets(tmp_path: Path) -> None:
    spec = write_fixture_model(PNEUMONIA, tmp_path / "model")
    running = start_server(spec, ServingSettings(intra_op_threads=1, warmup_runs=1, grace_seconds=0), port=0)
    try:
        top = ceiling(spec.model_dir, spec, seconds=0.1, batch_sizes=(1, 2), cores=2)
        first_best = top["images_per_s"]
        top = recheck_ceiling(spec.model_dir, spec, 0.1, top)
        loads = asyncio.run(grpc_loads(running.target, sample_jpeg(256), (1, 2), seconds=0.3))
        costs = cpu_costs(spec.model_dir, spec, sample_jpeg(256), runs=2)
    finally:
        running.stop(grace=0)
    assert len(top["configurations"]) == 4 and top["images_per_s"] > 0
    assert top["configurations"][top["best"]]["images_per_s"] == first_best == top["first_images_per_s"]
    assert top["images_per_s"] == max(first_best, top["recheck_images_per_s"])   # the stricter reference
    assert costs["model_cpu_ms"] > 0 and costs["decode_and_preprocess_cpu_ms"] > 0
    assert [load["concurrency"] for load in loads] == [1, 2]
    assert all(load["calls"] > 0 and load["errors"] == 0 and load["p99_ms"] >= load["p50_ms"] for load in loads)

    process = {"seconds_to_ready": 1.0, "peak_rss_mib": 100.0}
    results = {
        "image_bytes": 1, "seconds_per_measurement": 0.3,
        "models": {"pneumonia": {"ceiling": top, "cpu_per_image": costs, "service": loads, "gateway": loads, "service_process": process}},
        "gateway_process": process, "auth_process": process,
    }
    report = {"measured_at": "now", "machine": {"cores": 2}, "results": results, "targets": targets(results)}
    names = [check["target"] for check in report["targets"]]
    assert "pneumonia: service c2 / ceiling" in names and "pneumonia: service peak RSS MiB" in names
    text = markdown(report)
    assert "| service (gRPC) | 2 |" in text and "CPU per image, one thread" in text
    assert "gateway path" in text and "of the ceiling" in text   # what bounds each ratio
    assert "again after them" in text

    # A ceiling that moved during the run marks the ratio targets as unreliable, whatever they show.
    moved = {**top, "first_images_per_s": 100.0, "recheck_images_per_s": 50.0}
    results["models"]["pneumonia"]["ceiling"] = moved
    ratio_checks = [check for check in targets(results) if check["target"].endswith("/ ceiling")]
    assert ratio_checks and all(check["note"].startswith("unreliable") for check in ratio_checks)

    # A baseline that cannot start is reported and the rest of the run still written.
    results["baselines"] = {"task": "pneumonia", "errors": {}}
    with baseline_failure(results["baselines"], "original"):
        raise RuntimeError("original exited with 1 before it was ready")
    report["targets"] = targets(results)
    assert not any("original" in check["target"] for check in report["targets"])
    assert "- original: **not measured**, RuntimeError: original exited" in markdown(report)


def test_gateway_answers_kept_alive_requests_without_nagle_delay(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    gateway = start_gateway(GatewaySettings(
        DRTECH_HOME=tmp_path, DRTECH_AUTH_ADDR=dead, DRTECH_BONE_ADDR=dead, DRTECH_SKIN_ADDR=dead,
        DRTECH_PNEUMONIA_ADDR=dead, DRTECH_ROUTER_ADDR=dead,
    ))
    try:
        with httpx.Client(base_url=gateway.url) as client:   # one connection, kept alive
            client.get("/static/app.css").raise_for_status()
            timings = []
            for _ in range(10):
                started = time.perf_counter()
                client.get("/static/app.css").raise_for_status()
                timings.append(time.perf_counter() - started)
    finally:
        gateway.stop()
    assert statistics.median(timings) < 0.030   # was ~0.044 s: Nagle against delayed ACK
