"""`make bench`: the serving path measured against the model alone and against what users would pick.

In one run on this machine, per model (bone, skin, pneumonia):
  1. ceiling   - the shipped model.onnx alone in ONNX Runtime (serving settings), best batch size;
  2. service   - the model service over gRPC (`python -m services.<task>`), concurrency 1, 4, 16;
  3. gateway   - the whole path: bearer token (auth service), multipart upload, routing, storage,
                 record (`python -m gateway`), concurrency 1, 4, 16;
and two baselines on a Keras model of the same architecture (benchmarks/models.py):
  - tf service - the same serving core with the TensorFlow runtime (SavedModel loaded once), the
                 TensorFlow Serving way, over the same gRPC interface;
  - original   - a Flask endpoint that loads the Keras model per request (benchmarks/original_flask.py);
plus the LiteRT runtime on that model (the runtime decision) and the service with micro-batching on
(the batching decision). Every service's seconds from start to SERVING and peak RSS are reported.

The load generator runs in this process on the same cores as the servers: its CPU use is reported
with each row ("client cores"), because on a small machine it takes cycles from the servers.

    python -m benchmarks.serving [--seconds 5] [--tasks pneumonia] [--no-baselines] [--out DIR]

Not a test. Needs the `bench` extra (TensorFlow, Flask) for the baselines. Prints a table and writes
benchmarks/results/serving-<time>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from services.core.settings import usable_cores
from services.registry import diagnosis_specs

ROOT = Path(__file__).resolve().parent.parent
# task -> exam type of every model service that diagnoses (services/registry.py).
EXAM_TYPES = {task: spec.exam_type for task, spec in diagnosis_specs().items()}
TASKS = tuple(EXAM_TYPES)
CONCURRENCY = (1, 4, 16)


def SERVICE_CONFIGURATIONS(cores: int) -> list[dict[str, Any]]:  # noqa: N802 - a table, not a function
    """Serving settings compared on the first model at the highest concurrency (the defaults first)."""
    return [
        {"model_workers": cores, "intra_op_threads": 1},                        # the default
        {"model_workers": 1, "intra_op_threads": cores},                        # one run over every core
        {"model_workers": 1, "intra_op_threads": cores, "intra_op_spinning": 1},
        {"model_workers": cores, "intra_op_threads": 1, "max_batch_size": 4},
        {"model_workers": 1, "intra_op_threads": cores, "max_batch_size": 8, "max_batch_wait_ms": 5},
    ]

# --- the image and the machine -------------------------------------------------------------------


def sample_jpeg(size: int = 1024, seed: int = 0, grain: float = 4.0) -> bytes:
    """A radiograph-like JPEG: smooth shading plus grain (noise alone would compress unrealistically).

    1024x1024 at quality 90 with grain 4 is ~200 KB. Decoding cost grows with the bytes: with grain
    12 (~400 KB) decoding takes ~1.5x as long; `--image` measures a real file instead.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    shade = 128 + 90 * np.sin(3 * x) * np.cos(2 * y) + rng.normal(0, grain, (size, size))
    gray = np.clip(shade, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(gray, mode="L").convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def describe_machine() -> dict[str, Any]:
    machine: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": platform.platform(),
    }
    try:
        machine["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        machine["memory_gib"] = round(
            int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024, 1
        )
        machine["load_average_at_start"] = os.getloadavg()
    except (OSError, StopIteration, ValueError):
        pass
    import onnxruntime

    machine["onnxruntime"] = onnxruntime.__version__
    return machine


# --- measurement ---------------------------------------------------------------------------------


@dataclass
class Load:
    """What a closed-loop load at one concurrency gave."""

    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    client_cpu_seconds: float = 0.0
    server_cpu_seconds: dict[str, float] = field(default_factory=dict)

    def summary(self, images_per_call: int = 1) -> dict[str, Any]:
        ms = np.asarray(self.latencies) * 1000 if self.latencies else np.asarray([np.nan])
        images = max(1, len(self.latencies) * images_per_call)
        cpu_seconds = self.client_cpu_seconds + sum(self.server_cpu_seconds.values())
        return {
            "concurrency": self.concurrency,
            "images_per_s": round(len(self.latencies) * images_per_call / self.seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "calls": len(self.latencies),
            "errors": self.errors,
            "client_cores": round(self.client_cpu_seconds / self.seconds, 2),
            "client_cpu_ms_per_image": round(1000 * self.client_cpu_seconds / images, 1),
            # CPU each server process used per image served: where the cores went.
            "server_cpu_ms_per_image": {
                name: round(1000 * seconds / images, 1) for name, seconds in self.server_cpu_seconds.items()
            },
            # Servers and load generator together: about the machine's core count when CPU-bound.
            "cores_busy": round(cpu_seconds / self.seconds, 2),
        }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def closed_loop(
    call: Callable[[], Awaitable[None]], concurrency: int, seconds: float, watch: list[Process] = ()  # type: ignore[assignment]
) -> Load:
    """`concurrency` workers each send the next call as soon as the last answers, for `seconds`.

    One warm-up call per worker is not counted.
    """
    await asyncio.gather(*(call() for _ in range(concurrency)))
    load = Load(concurrency, seconds)
    cpu_started = _cpu_seconds()
    servers_started = {process.name: process.cpu_seconds() for process in watch}
    started = time.perf_counter()
    deadline = started + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                await call()
            except Exception:  # noqa: BLE001 - counted, not fatal: a benchmark reports errors
                load.errors += 1
                continue
            load.latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    load.seconds = time.perf_counter() - started
    load.client_cpu_seconds = _cpu_seconds() - cpu_started
    load.server_cpu_seconds = {
        process.name: process.cpu_seconds() - servers_started[process.name] for process in watch
    }
    return load


def _run_rate(model: Any, batch: np.ndarray, streams: int, seconds: float) -> float:
    """Images/s with `streams` threads each running `batch` back to back (GIL released in the runtime)."""
    import threading

    model.run(batch)
    counts = [0] * streams
    deadline = time.perf_counter() + seconds

    def stream(index: int) -> None:
        while time.perf_counter() < deadline or counts[index] < 2:
            model.run(batch)
            counts[index] += 1

    threads = [threading.Thread(target=stream, args=(index,)) for index in range(streams)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return round(sum(counts) * len(batch) / (time.perf_counter() - started), 1)


def ceiling(
    model_dir: Path, spec: Any, seconds: float, batch_sizes: tuple[int, ...] = (1, 4, 8), cores: int | None = None
) -> dict:
    """The model alone: the shipped file in ONNX Runtime, the best of one run over every core and one
    single-threaded run per core side by side, at each batch size (no decoding, no RPC)."""
    from services.core.runtime import open_model

    cores = cores or usable_cores()
    spec = replace(spec, model_dir=model_dir)
    rng = np.random.default_rng(0)
    rows: dict[str, dict[str, Any]] = {}
    for streams, threads in {(1, cores), (cores, 1)}:
        model = open_model(spec, intra_op_threads=threads, spinning=streams == 1)
        model.warm_up(2)
        for size in batch_sizes:
            width, height = model.input_size
            batch = rng.uniform(-1, 1, (size, height, width, 3)).astype(np.float32)
            rows[f"{streams} run(s) x {threads} thread(s), batch {size}"] = {
                "runs": streams, "threads": threads, "batch_size": size,
                "images_per_s": _run_rate(model, batch, streams, seconds),
            }
    best = max(rows, key=lambda name: rows[name]["images_per_s"])
    return {"configurations": rows, "best": best, "images_per_s": rows[best]["images_per_s"]}


def recheck_ceiling(model_dir: Path, spec: Any, seconds: float, measured: dict) -> dict:
    """Measure the ceiling's best configuration again (after the loads) and keep the higher rate.

    On a machine that other work shares, the ceiling measured a minute before the loads may have
    had more or fewer cores to itself than they had; a lower first figure would flatter every ratio
    (we saw service / ceiling above 1). The higher of the two is the stricter reference.
    """
    from services.core.runtime import open_model

    best = measured["configurations"][measured["best"]]
    model = open_model(replace(spec, model_dir=model_dir), intra_op_threads=best["threads"],
                       spinning=best["runs"] == 1)
    model.warm_up(2)
    width, height = model.input_size
    batch = np.random.default_rng(0).uniform(-1, 1, (best["batch_size"], height, width, 3)).astype(np.float32)
    again = _run_rate(model, batch, best["runs"], seconds)
    first = measured["images_per_s"]
    return {**measured, "first_images_per_s": first, "recheck_images_per_s": again,
            "images_per_s": max(first, again)}


def cpu_costs(model_dir: Path, spec: Any, image: bytes, runs: int = 30) -> dict[str, float]:
    """CPU ms per image, one thread: the model alone (batch 1) and the service's own decoding and
    pre-processing of `image`. Their ratio bounds how close a CPU-bound service gets to the ceiling."""
    from services.core.imaging import read_image
    from services.core.preprocessing import draft_size_for, to_model_input
    from services.core.runtime import open_model

    spec = replace(spec, model_dir=model_dir)
    model = open_model(spec, intra_op_threads=1)
    width, height = model.input_size
    batch = np.zeros((1, height, width, 3), np.float32)

    def prepare() -> None:   # what the service does with an upload (services/core/service.py)
        to_model_input(read_image(image, None, draft_size=draft_size_for(model.input_size)).image, model.input_size)

    costs = {}
    for name, work in (("model_cpu_ms", lambda: model.run(batch)), ("decode_and_preprocess_cpu_ms", prepare)):
        work()
        started = time.thread_time()
        for _ in range(runs):
            work()
        costs[name] = round(1000 * (time.thread_time() - started) / runs, 2)
    return costs


def session_options(model_dir: Path, spec: Any, seconds: float, cores: int | None = None) -> dict[str, float]:
    """ONNX Runtime session options (graph optimisation level x memory arena) in the serving layout:
    one single-threaded run per core, batch 1. Images/s per combination."""
    from services.core.runtime import open_model

    cores = cores or usable_cores()
    spec = replace(spec, model_dir=model_dir)
    rates = {}
    for level in ("basic", "extended", "all"):
        for arena in (True, False):
            model = open_model(spec, intra_op_threads=1, graph_optimization=level, memory_arena=arena)
            width, height = model.input_size
            batch = np.random.default_rng(0).uniform(-1, 1, (1, height, width, 3)).astype(np.float32)
            rates[f"graph_optimization={level} memory_arena={arena}"] = _run_rate(model, batch, cores, seconds)
    return rates


async def grpc_loads(
    target: str, image: bytes, concurrencies: tuple[int, ...], seconds: float, watch: list[Process] = ()  # type: ignore[assignment]
) -> list[dict]:
    import grpc

    from protos.drtech.v1 import diagnosis_pb2, diagnosis_pb2_grpc

    limit = 32 * 1024 * 1024
    options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:   # one channel, reused
        stub = diagnosis_pb2_grpc.DiagnosisServiceStub(channel)
        request = diagnosis_pb2.DiagnoseRequest(image=image, media_type="image/jpeg")

        async def call() -> None:
            await stub.Diagnose(request, timeout=120)

        return [(await closed_loop(call, c, seconds, watch)).summary() for c in concurrencies]


async def gateway_loads(
    url: str, exam_type: str, image: bytes, concurrencies: tuple[int, ...], seconds: float,
    watch: list[Process] = (),  # type: ignore[assignment]
) -> list[dict]:
    import httpx

    limits = httpx.Limits(max_connections=max(concurrencies), max_keepalive_connections=max(concurrencies))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        headers = await _bench_account(client)

        async def call() -> None:
            # Distinct bytes per upload (16 random bytes after the JPEG's end marker, which decoders
            # ignore), so every request really stores a new blob instead of finding it stored.
            unique = image + os.urandom(16)
            answer = await client.post(
                "/api/v1/diagnoses", headers=headers, data={"exam_type": exam_type},
                files={"file": ("image.jpg", unique, "image/jpeg")},
            )
            if answer.status_code != 201 or answer.json().get("status") != "completed":
                raise RuntimeError(f"{answer.status_code} {answer.text[:200]}")

        return [(await closed_loop(call, c, seconds, watch)).summary() for c in concurrencies]


async def _bench_account(client: Any) -> dict[str, str]:
    """A new account, logged in: its bearer header (the client keeps no cookie, as an API client)."""
    email = f"bench-{time.time_ns()}@example.com"
    password = "bench-pass-123"
    reply = await client.post("/api/v1/auth/signup", json={
        "email": email, "password": password, "first_name": "Bench", "surname": "Mark",
    })
    reply.raise_for_status()
    reply = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    reply.raise_for_status()
    client.cookies.clear()
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


async def fetch_loads(
    url: str, exam_type: str, image: bytes, concurrencies: tuple[int, ...], seconds: float,
    watch: list[Process] = (),  # type: ignore[assignment]
) -> list[dict]:
    """One upload, then its stored image fetched again and again (GET .../image, an audited access
    each, as a history page's thumbnails are): the cost of serving a record, not of diagnosing."""
    import httpx

    limits = httpx.Limits(max_connections=max(concurrencies), max_keepalive_connections=max(concurrencies))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        headers = await _bench_account(client)
        created = await client.post("/api/v1/diagnoses", headers=headers, data={"exam_type": exam_type},
                                    files={"file": ("image.jpg", image, "image/jpeg")})
        created.raise_for_status()
        path = created.json()["image_url"]

        async def call() -> None:
            answer = await client.get(path, headers=headers)
            if answer.status_code != 200 or len(answer.content) != len(image):
                raise RuntimeError(f"{answer.status_code} {answer.text[:200]}")

        return [(await closed_loop(call, c, seconds, watch)).summary() for c in concurrencies]


async def original_loads(url: str, image: bytes, requests: int) -> dict:
    """Sequential requests only: each one loads the model, so concurrency would just queue them."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        load = Load(1, 0.0)
        cpu_started, started = _cpu_seconds(), time.perf_counter()
        for _ in range(requests):
            t0 = time.perf_counter()
            answer = await client.post("/predict", files={"file": ("image.jpg", image, "image/jpeg")})
            answer.raise_for_status()
            load.latencies.append(time.perf_counter() - t0)
        load.seconds = time.perf_counter() - started
        load.client_cpu_seconds = _cpu_seconds() - cpu_started
        return load.summary()


# --- processes -----------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    address: str
    seconds_to_ready: float

    def cpu_seconds(self) -> float:
        """User + system CPU of the process (all its threads) so far."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):   # the resident set's high-water mark
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def start_process(
    name: str, args: list[str], env: dict[str, str], timeout_s: float = 180, cwd: Path = ROOT
) -> Process:
    """Start `python <args>` in `cwd` (whose code it runs: the working directory comes first on
    sys.path); ready when it prints `listening on ADDRESS` (model services: SERVING)."""
    started = time.perf_counter()
    popen = subprocess.Popen(
        [sys.executable, *args], cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    while True:
        line = popen.stdout.readline() if popen.stdout else ""
        if line.startswith("listening on "):
            return Process(name, popen, line.removeprefix("listening on ").strip(), time.perf_counter() - started)
        if not line and popen.poll() is not None:
            raise RuntimeError(f"{name} exited with {popen.returncode} before it was ready")
        if time.perf_counter() - started > timeout_s:
            popen.kill()
            raise RuntimeError(f"{name} was not ready after {timeout_s}s")


@contextmanager
def processes() -> Iterator[list[Process]]:
    running: list[Process] = []
    try:
        yield running
    finally:
        for process in reversed(running):
            process.stop()


def serving_env(**values: Any) -> dict[str, str]:
    """A model service's settings. Refusing is off unless given: the benchmark sends one generated
    image to every model, which a gate rightly refuses, and a refusal skips the heatmap; the gate
    itself (one small product per image) is still computed."""
    values = {"refuse_unreadable": "false", **values}
    return {f"DRTECH_SERVING_{key.upper()}": str(value) for key, value in values.items()}


def process_row(process: Process) -> dict[str, Any]:
    return {"seconds_to_ready": round(process.seconds_to_ready, 2), "peak_rss_mib": process.peak_rss_mib()}


# --- the run -------------------------------------------------------------------------------------


@contextmanager
def baseline_failure(baselines: dict[str, Any], name: str) -> Iterator[None]:
    """A baseline that cannot run (e.g. its package is not installed) is reported, not fatal: the
    rest of a five-minute run is still written out."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - any failure of a baseline is reported as such
        baselines["errors"][name] = f"{type(error).__name__}: {error}"
        print(f"  {name} failed: {baselines['errors'][name]}", flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from services.core.spec import TaskSpec

    specs: dict[str, TaskSpec] = {}
    for task in args.tasks:
        module = __import__(f"services.{task}.spec", fromlist=["SPEC"])
        specs[task] = module.SPEC
    image = args.image.read_bytes() if args.image else sample_jpeg()
    results: dict[str, Any] = {"image_bytes": len(image), "seconds_per_measurement": args.seconds, "models": {}}
    concurrencies = tuple(args.concurrency)

    with tempfile.TemporaryDirectory(prefix="drtech-bench-") as scratch, processes() as running:
        home = Path(scratch) / "home"
        auth = start_process("auth", ["-m", "services.auth", "--port", "0"], {
            "DRTECH_HOME": str(home), "DRTECH_AUTH_ARGON2_TIME_COST": "1",
            "DRTECH_AUTH_ARGON2_MEMORY_KIB": "8192", "DRTECH_AUTH_ARGON2_PARALLELISM": "1",
        })
        running.append(auth)
        services: dict[str, Process] = {}
        for task in specs:
            services[task] = start_process(task, ["-m", f"services.{task}", "--port", "0"], serving_env(
                port=0, **dict(setting.split("=", 1) for setting in args.serving),
            ))
            running.append(services[task])
        gateway_env = {
            "DRTECH_HOME": str(home), "DRTECH_AUTH_ADDR": auth.address,
            "DRTECH_ROUTER_ADDR": "127.0.0.1:9",   # unused: the benchmark names the exam type
            "DRTECH_GATEWAY_INTERNAL_PORT": "0",   # a free one: 8001 may be another gateway's
            **{f"DRTECH_{task.upper()}_ADDR": process.address for task, process in services.items()},
        }
        gateway = start_process("gateway", ["-m", "gateway", "--port", "0"], gateway_env)
        running.append(gateway)
        results["gateway_process"] = process_row(gateway)

        for task, spec in specs.items():
            print(f"[{task}] ceiling, service, gateway ...", flush=True)
            row = {"ceiling": ceiling(spec.model_dir, spec, args.seconds),
                   "cpu_per_image": cpu_costs(spec.model_dir, spec, image)}
            row["service"] = asyncio.run(
                grpc_loads(services[task].address, image, concurrencies, args.seconds, [services[task]])
            )
            row["gateway"] = asyncio.run(gateway_loads(
                gateway.address, EXAM_TYPES[task], image, concurrencies, args.seconds, [gateway, auth, services[task]]
            ))
            row["ceiling"] = recheck_ceiling(spec.model_dir, spec, args.seconds, row["ceiling"])
            row["service_process"] = process_row(services[task])
            results["models"][task] = row
        results["gateway_process"] = process_row(gateway)
        results["auth_process"] = process_row(auth)

        first = next(iter(specs))
        print(f"[{first}] ONNX Runtime session options ...", flush=True)
        results["session_options"] = {"task": first, **session_options(
            specs[first].model_dir, specs[first], max(1.0, args.seconds / 2)
        )}
        if args.batching:
            print(f"[{first}] serving configurations (workers, threads, micro-batching) ...", flush=True)
            results["batching"] = {}
            cores = usable_cores()
            for settings in SERVICE_CONFIGURATIONS(cores):
                service = start_process(f"{first}-variant", ["-m", f"services.{first}", "--port", "0"],
                                        serving_env(port=0, **settings))
                running.append(service)
                loads = asyncio.run(grpc_loads(service.address, image, (max(concurrencies),), args.seconds, [service]))
                results["batching"][" ".join(f"{key}={value}" for key, value in settings.items())] = loads[0]
                service.stop()

        if args.baselines:
            task = args.baseline_task if args.baseline_task in specs else first
            spec = specs[task]
            print(f"[{task}] baselines: exporting a Keras model of the same architecture ...", flush=True)
            from benchmarks.models import export_model_folder

            with contextlib.redirect_stdout(io.StringIO()):   # Keras prints every exported signature
                folder = export_model_folder(spec, Path(scratch) / "same-architecture")
            baselines: dict[str, Any] = {"task": task, "errors": {}}
            results["baselines"] = baselines
            for runtime in ("tensorflow", "litert", "onnxruntime"):
                print(f"[{task}] {runtime} service on the same-architecture model ...", flush=True)
                with baseline_failure(baselines, f"{runtime} service"):
                    service = start_process(f"{task}-{runtime}", ["-m", f"services.{task}", "--port", "0"],
                                            serving_env(port=0, runtime=runtime, model_dir=folder))
                    running.append(service)
                    loads = asyncio.run(
                        grpc_loads(service.address, image, concurrencies, args.seconds, [service])
                    )
                    baselines[f"{runtime} service"] = {"loads": loads, **process_row(service)}
                    service.stop()
            print(f"[{task}] original approach (Flask, Keras model loaded per request) ...", flush=True)
            with baseline_failure(baselines, "original"):
                original = start_process("original", ["-m", "benchmarks.original_flask", "--model",
                                                       str(folder / "model.keras")], {})
                running.append(original)
                baselines["original"] = {
                    "loads": [asyncio.run(original_loads(original.address, image, args.original_requests))],
                    **process_row(original),
                }
                original.stop()
    return results


# --- report --------------------------------------------------------------------------------------


def _at(loads: list[dict], concurrency: int) -> dict | None:
    return next((load for load in loads if load["concurrency"] == concurrency), None)


def ceiling_unsteady(measured: dict) -> bool:
    """Whether the ceiling measured before and after the loads differ by more than 10 %."""
    if "recheck_images_per_s" not in measured:
        return False
    first, again = measured["first_images_per_s"], measured["recheck_images_per_s"]
    return abs(first - again) > 0.1 * max(first, again)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 5 with its measured value and whether it holds."""
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float, goal: str, holds: bool, note: str = "") -> None:
        checks.append({"target": name, "measured": round(value, 2), "goal": goal, "holds": bool(holds),
                       **({"note": note} if note else {})})

    top = max(load["concurrency"] for row in results["models"].values() for load in row["service"])
    for task, row in results["models"].items():
        ceiling_rate = row["ceiling"]["images_per_s"]
        unsteady = ""
        if ceiling_unsteady(row["ceiling"]):
            unsteady = "unreliable: the ceiling changed by more than 10 % during the run"
        service, gateway = _at(row["service"], top), _at(row["gateway"], top)
        check(f"{task}: service c{top} / ceiling", service["images_per_s"] / ceiling_rate, ">= 0.90",
              service["images_per_s"] >= 0.9 * ceiling_rate, unsteady)
        check(f"{task}: gateway c{top} / ceiling", gateway["images_per_s"] / ceiling_rate, ">= 0.75",
              gateway["images_per_s"] >= 0.75 * ceiling_rate, unsteady)
        single = _at(row["gateway"], 1)
        if single:
            ratio = gateway["p99_ms"] / single["p50_ms"]
            check(f"{task}: gateway p99 c{top} / p50 c1", ratio, "<= 3", ratio <= 3)
        process = row["service_process"]
        check(f"{task}: service seconds to SERVING", process["seconds_to_ready"], "<= 5",
              process["seconds_to_ready"] <= 5)
        check(f"{task}: service peak RSS MiB", process["peak_rss_mib"], "< 400", process["peak_rss_mib"] < 400)
    baselines = results.get("baselines")
    if baselines:
        task = baselines["task"]
        row = results["models"][task]
        service, gateway = _at(row["service"], top), _at(row["gateway"], top)
        if "tensorflow service" in baselines:
            tf_rate = _at(baselines["tensorflow service"]["loads"], top)["images_per_s"]
            check(f"{task}: service c{top} / TF-runtime service c{top}", service["images_per_s"] / tf_rate,
                  ">= 3", service["images_per_s"] >= 3 * tf_rate)
        if "original" in baselines:
            original_rate = baselines["original"]["loads"][0]["images_per_s"]
            check(f"{task}: gateway c{top} / original (Flask, per-request load)",
                  gateway["images_per_s"] / original_rate, ">= 50",
                  gateway["images_per_s"] >= 50 * original_rate)
    return checks


def _load_lines(name: str, loads: list[dict], reference: float | None) -> list[str]:
    lines = []
    for load in loads:
        ratio = f"{load['images_per_s'] / reference:.2f}" if reference else ""
        cpu = ", ".join(f"{name} {ms}" for name, ms in load.get("server_cpu_ms_per_image", {}).items())
        busy = load.get("cores_busy", "")
        lines.append(
            f"| {name} | {load['concurrency']} | {load['images_per_s']:.1f} | {load['p50_ms']:.1f} "
            f"| {load['p99_ms']:.1f} | {ratio} | {load['client_cores']:.2f} | {cpu} | {busy} | {load['errors']} |"
        )
    return lines


def cpu_bound(model_cpu_ms: float, load: dict) -> tuple[float, float]:
    """(CPU ms per image of the whole path, servers and load generator; model CPU / that), i.e. the
    most this path can reach of the ceiling while the machine's cores are what limits it."""
    path_ms = sum(load["server_cpu_ms_per_image"].values()) + load.get("client_cpu_ms_per_image", 0.0)
    return path_ms, model_cpu_ms / path_ms if path_ms else float("nan")


def markdown(report: dict[str, Any]) -> str:
    results = report["results"]
    lines = [f"# Serving benchmark {report['measured_at']}", "", f"Machine: `{json.dumps(report['machine'])}`", "",
             f"Image: {results['image_bytes']} bytes JPEG; {results['seconds_per_measurement']} s per measurement. "
             "The load generator shares the machine's cores with the servers (client cores = its CPU use).", ""]
    header = ["| path | concurrency | images/s | p50 ms | p99 ms | / ceiling | client cores | server CPU ms/image "
              "| cores busy | errors |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for task, row in results["models"].items():
        ceiling_row = row["ceiling"]
        rate = ceiling_row["images_per_s"]
        tried = "; ".join(f"{name}: {value['images_per_s']}" for name, value in ceiling_row["configurations"].items())
        costs = row.get("cpu_per_image", {})
        lines += [f"## {task}", "", f"Ceiling (model alone, ONNX Runtime): **{rate} images/s** with "
                  f"{ceiling_row['best']} (tried {tried}).", ""]
        if "recheck_images_per_s" in ceiling_row:
            first, again = ceiling_row["first_images_per_s"], ceiling_row["recheck_images_per_s"]
            note = (" They differ by more than 10 %: the machine's other load changed during the run, "
                    "so its ratios are unreliable." if ceiling_unsteady(ceiling_row) else "")
            lines += [f"The best configuration measured before the loads: {first} images/s, again after them: "
                      f"{again}; the ratios use the higher.{note}", ""]
        if costs:
            lines += [f"CPU per image, one thread: model {costs['model_cpu_ms']} ms; the service's decoding and "
                      f"pre-processing of this image {costs['decode_and_preprocess_cpu_ms']} ms.", ""]
        lines += header
        lines += _load_lines("service (gRPC)", row["service"], rate)
        lines += _load_lines("gateway (HTTP)", row["gateway"], rate)
        process = row["service_process"]
        lines += ["", f"Service: SERVING after {process['seconds_to_ready']} s, peak RSS {process['peak_rss_mib']} MiB.", ""]
        top = max(load["concurrency"] for load in row["service"])
        if costs and _at(row["service"], top) and _at(row["gateway"], top):
            bounds = []
            for name in ("service", "gateway"):
                path_ms, bound = cpu_bound(costs["model_cpu_ms"], _at(row[name], top))
                bounds.append(f"{name} path {path_ms:.1f} ms -> at most {bound:.2f} of the ceiling")
            lines += [f"CPU per image at concurrency {top}, servers and load generator together, against the "
                      f"model's {costs['model_cpu_ms']} ms: " + "; ".join(bounds) + ".", ""]
    lines += [f"Gateway process peak RSS {results['gateway_process']['peak_rss_mib']} MiB; auth "
              f"{results['auth_process']['peak_rss_mib']} MiB.", ""]
    if "session_options" in results:
        options = dict(results["session_options"])
        lines += [f"## ONNX Runtime session options ({options.pop('task')}, model alone, one run per core, batch 1)",
                  "", "| options | images/s |", "|---|---|"]
        lines += [f"| {name} | {rate} |" for name, rate in options.items()] + [""]
    if "batching" in results:
        lines += ["## Serving configurations (first model, highest concurrency)", "", *header]
        for name, load in results["batching"].items():
            lines += _load_lines(name, [load], None)
        lines.append("")
    baselines = results.get("baselines")
    if baselines:
        task = baselines["task"]
        rate = results["models"][task]["ceiling"]["images_per_s"]
        lines += [f"## Baselines and runtimes ({task}, a Keras model of the same architecture)", "", *header]
        for name in ("tensorflow service", "litert service", "onnxruntime service", "original"):
            if name in baselines:
                lines += _load_lines(name, baselines[name]["loads"], rate)
        lines.append("")
        for name in ("tensorflow service", "litert service", "onnxruntime service", "original"):
            if name in baselines:
                lines.append(f"- {name}: ready after {baselines[name]['seconds_to_ready']} s, "
                             f"peak RSS {baselines[name]['peak_rss_mib']} MiB")
        for name, error in baselines.get("errors", {}).items():
            lines.append(f"- {name}: **not measured**, {error}")
        lines.append("")
    lines += ["## Targets", "", "| target | measured | goal | holds |", "|---|---|---|---|"]
    for check in report["targets"]:
        holds = ("yes" if check["holds"] else "NO") + (f" ({check['note']})" if check.get("note") else "")
        lines.append(f"| {check['target']} | {check['measured']} | {check['goal']} | {holds} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--image", type=Path, help="image to send (default: a generated 1024x1024 JPEG)")
    parser.add_argument("--serving", nargs="*", default=[], metavar="NAME=VALUE",
                        help="serving settings for the model services, e.g. max_batch_size=8 (default: defaults)")
    parser.add_argument("--no-variants", dest="batching", action="store_false",
                        help="skip the serving-configuration runs (workers, threads, micro-batching)")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="skip TF/LiteRT/original baselines (no TensorFlow needed)")
    parser.add_argument("--baseline-task", default="pneumonia", choices=TASKS)
    parser.add_argument("--original-requests", type=int, default=3, help="requests to the Flask baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # TensorFlow's start-up chatter (here and in children)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    machine = describe_machine()
    started = time.perf_counter()
    results = run(args)
    report = {"measured_at": stamp, "machine": machine, "results": results,
              "wall_seconds": round(time.perf_counter() - started, 1)}
    report["targets"] = targets(results)
    text = markdown(report)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"serving-{stamp}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"serving-{stamp}.md").write_text(text)
    print(f"wrote {args.out / f'serving-{stamp}'}.json and .md ({report['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
