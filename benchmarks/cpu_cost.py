"""CPU per diagnosis through the whole platform, by process and by stage, against the model alone.

    python -m benchmarks.cpu_cost [--exam-type chest_xray] [--diagnoses 800] [--concurrency 16]
        [--images 40] [--profile-diagnoses 400] [--out benchmarks/results]

Starts auth, the exam type's model service and the gateway (as `make bench` and `make run` do),
then sends `--diagnoses` uploads at `--concurrency` through the gateway's API with a bearer token,
cycling over `--images` different images: real ones from DRTECH_DATA_DIR (or ../shared/data) when
the data set is there, else generated radiograph-like JPEGs. Each upload gets 16 random bytes after
its end marker (decoders ignore them), so every diagnosis stores a new blob.

Reported, per diagnosis, in CPU milliseconds (user + system, from /proc/<pid>/stat before and after):
- each platform process (gateway, auth, model service) and their sum; the gateway and model service
  also per thread (the gateway's event loop is its main thread) and per stage, from the
  `drtech_stage_cpu_seconds_total` counters on their /metrics (services/common/stage_cpu.py);
- the model alone in ONNX Runtime (the same model.onnx, one thread, batch 1), measured in the same
  run, and platform / model; the model-only ceiling (images/s, serving layout) and gateway / ceiling;
- throughput, mean, p50, p99 latency and p99 / mean;
- the load generator's own CPU (this process), separately: it is not the platform's;
- a blob stored alone (the gateway's LocalBlobStore.put, fsync included, uploads of the mean size)
  on the file system the gateway stored to, after the load: the disk's share of the gateway's
  `store` stage, which varies with the disk far more than with the platform's code.

With generated images the model service's gate is off (DRTECH_SERVING_REFUSE_UNREADABLE=0): they
are not X-rays and would be refused; the gate's CPU is part of the model run either way. The router
is not used: the exam type is named. With `--profile-diagnoses` > 0 (and py-spy found), a second
pass of that many diagnoses runs under `py-spy record` on the gateway and the model service:
speedscope JSON files in `--out`, and their 10 functions with the most self time in the report.
The measured pass runs without the profiler.

Not a test (tests/integration/test_bench_smoke.py runs it on a few diagnoses). Writes
`--out`/cpu-<UTC time>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving import (
    EXAM_TYPES, ROOT, Process, _cpu_seconds, ceiling, cpu_costs, describe_machine, processes, recheck_ceiling,
    sample_jpeg, serving_env, start_process,
)
from benchmarks.upload_client import KeptAliveConnection, MultipartUpload, Reply

TASK_OF = {exam_type: task for task, exam_type in EXAM_TYPES.items()}
# Where each exam type's images are in the shared data set (training/README.md).
DATA_FOLDERS = {"chest_xray": "chest_xray", "bone_xray": "knee_kl", "skin_lesion": "ham10000"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
STAGE_METRIC = "drtech_stage_cpu_seconds"


# --- images --------------------------------------------------------------------------------------


def data_root() -> Path:
    return Path(os.environ.get("DRTECH_DATA_DIR", ROOT.parent / "shared" / "data"))


def load_images(exam_type: str, count: int, root: Path | None = None) -> tuple[list[bytes], str]:
    """`count` different images of the exam type and where they came from: the first files (sorted,
    so every run sends the same ones) of the data set when it is there, else generated JPEGs."""
    if count < 1:
        raise ValueError(f"at least one image is needed, not {count}")
    folder = (root or data_root()) / DATA_FOLDERS[exam_type]
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if files:
        return [path.read_bytes() for path in files[:count]], f"{min(count, len(files))} files of {folder}"
    return [sample_jpeg(seed=seed) for seed in range(count)], (
        f"{count} generated 1024x1024 JPEGs ({folder} not found; the model's gate off)")


# --- CPU of processes, threads and stages ----------------------------------------------------------


def _ticks(stat_path: Path) -> int:
    fields = stat_path.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # utime + stime, in clock ticks


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of `pid` so far, grouped: "main" (the process's first thread: the
    gateway's event loop) and the other threads by their name (/proc/<pid>/task/<tid>/comm). A thread
    that ended meanwhile drops out of the groups (the process total still has it)."""
    tick = os.sysconf("SC_CLK_TCK")
    groups: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = "main" if task.name == str(pid) else f"thread {(task / 'comm').read_text().strip()}"
            groups[name] = groups.get(name, 0.0) + _ticks(task / "stat") / tick
        except (FileNotFoundError, ProcessLookupError):
            continue   # the thread ended between the listing and the read
    return groups


def stage_cpu_seconds(metrics_text: str) -> dict[str, float]:
    """Seconds per stage from a Prometheus text page (summed over the other labels, e.g. task)."""
    from prometheus_client.parser import text_string_to_metric_families

    stages: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != STAGE_METRIC:
            continue
        for sample in family.samples:
            if sample.name == f"{STAGE_METRIC}_total":
                stage = sample.labels["stage"]
                stages[stage] = stages.get(stage, 0.0) + sample.value
    return stages


@dataclass
class Watched:
    """A platform process whose CPU the report splits; `metrics_url` serves its stage counters."""

    process: Process
    metrics_url: str | None = None

    def snapshot(self) -> dict[str, Any]:
        import httpx

        snap: dict[str, Any] = {"total": self.process.cpu_seconds(),
                                "threads": thread_cpu_seconds(self.process.popen.pid)}
        if self.metrics_url:
            snap["stages"] = stage_cpu_seconds(httpx.get(self.metrics_url, timeout=30).text)
        return snap


def per_diagnosis_ms(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    return {name: round(1000 * (after[name] - before.get(name, 0.0)) / count, 3)
            for name in sorted(after, key=lambda name: -(after[name] - before.get(name, 0.0)))}


# --- load ----------------------------------------------------------------------------------------


async def drive(url: str, exam_type: str, images: Sequence[bytes], diagnoses: int, concurrency: int,
                between: Any = None) -> dict[str, Any]:
    """Sign up and log in (httpx), warm up (one diagnosis per worker), call `between()` (the snapshot
    before), then `diagnoses` uploads by `concurrency` workers; latencies, errors and this process's CPU."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        email, password = f"cpu-{time.time_ns()}@example.com", "bench-pass-123"
        (await client.post("/api/v1/auth/signup", json={
            "email": email, "password": password, "first_name": "Bench", "surname": "Mark"})).raise_for_status()
        reply = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
        reply.raise_for_status()
        token = reply.json()["access_token"]
    # The uploads go through a lean HTTP/1.1 client (benchmarks/upload_client.py): one kept-alive
    # connection per worker, each image's multipart body built once; the load generator's CPU is
    # taken from the same cores as the platform's.
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json",
               "User-Agent": "drtech-cpu-cost"}
    connections = [KeptAliveConnection(url) for _ in range(concurrency)]
    sent = 0

    async def post(connection: KeptAliveConnection, upload: MultipartUpload) -> Reply:
        # 16 random bytes after the file's end: a new blob each time.
        return await connection.post("/api/v1/diagnoses", {**headers, "Content-Type": upload.content_type},
                                     upload.body(os.urandom(16)))

    try:
        # Each image once first: a model's gate refuses a few genuine images (up to 2%), which would
        # count as errors; those are left out of the load, and how many is reported.
        accepted = []
        for image in images:
            upload = MultipartUpload({"exam_type": exam_type}, "file", "image.jpg", "image/jpeg", image)
            answer = await post(connections[0], upload)
            if answer.status_code == 201 and answer.json().get("status") == "completed":
                accepted.append(upload)
            elif answer.status_code != 422:
                raise RuntimeError(f"{answer.status_code} {answer.text[:200]}")
        if not accepted:
            raise RuntimeError(f"the model refused all {len(images)} images")

        async def diagnose(connection: KeptAliveConnection) -> None:
            nonlocal sent
            answer = await post(connection, accepted[sent % len(accepted)])
            sent += 1
            if answer.status_code != 201 or answer.json().get("status") != "completed":
                raise RuntimeError(f"{answer.status_code} {answer.text[:200]}")

        await asyncio.gather(*(diagnose(connection) for connection in connections))
        snapshot = between() if between else None
        latencies: list[float] = []
        errors: list[str] = []
        left = diagnoses

        async def worker(connection: KeptAliveConnection) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                started = time.perf_counter()
                try:
                    await diagnose(connection)
                except Exception as error:  # noqa: BLE001 - counted and reported, not fatal
                    errors.append(str(error)[:200])
                    continue
                latencies.append(time.perf_counter() - started)

        cpu_started, started = _cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(worker(connection) for connection in connections))
        seconds = time.perf_counter() - started
    finally:
        for connection in connections:
            await connection.close()
    return {"snapshot": snapshot, "latencies": latencies, "errors": errors, "seconds": seconds,
            "client_cpu_seconds": _cpu_seconds() - cpu_started, "refused_images": len(images) - len(accepted)}


def latency_row(latencies: list[float], seconds: float) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    mean = float(np.mean(ms))
    return {"images_per_s": round(len(latencies) / seconds, 1), "mean_ms": round(mean, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "p99_over_mean": round(float(np.percentile(ms, 99)) / mean, 2)}


def blob_put_alone(folder: Path, size: int, count: int = 100) -> dict[str, Any]:
    """CPU and wall time of the gateway's LocalBlobStore.put for `count` new blobs of `size` bytes
    in `folder` (one thread, nothing else running), and the file system it is on."""
    from gateway.storage import LocalBlobStore

    store = LocalBlobStore(folder)
    blobs = [os.urandom(size) for _ in range(count)]
    cpu_started, started = time.thread_time(), time.perf_counter()
    for blob in blobs:
        store.put(blob)
    return {"cpu_ms": round(1000 * (time.thread_time() - cpu_started) / count, 3),
            "wall_ms": round(1000 * (time.perf_counter() - started) / count, 3),
            "file_system": file_system_of(folder)}


def file_system_of(path: Path) -> str:
    """The type and device of the mount that holds `path` (Linux /proc/mounts), else "unknown"."""
    try:
        mounts = [line.split()[:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    resolved = str(path.resolve())

    def holds(mount_point: str) -> bool:
        return resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")

    found = max((m for m in mounts if len(m) == 3 and holds(m[1])), key=lambda m: len(m[1]), default=None)
    return f"{found[2]} on {found[0]} ({found[1]})" if found else "unknown"


# --- profile -------------------------------------------------------------------------------------


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (the bench extra installs it there), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def start_profiles(py_spy: str, targets: dict[str, int], out: Path, stamp: str) -> dict[str, tuple[subprocess.Popen, Path]]:
    running = {}
    for name, pid in targets.items():
        path = out / f"cpu-{stamp}-{name}.speedscope.json"
        # Blocking sampling (py-spy pauses the process for each sample): with --nonblocking its
        # idle detection is racy and waits (Condition.wait, select) took a third of the samples.
        # The pauses slow this pass, which is why the measured pass runs without the profiler.
        # Idle threads are left out, so self time is where the CPU went.
        popen = subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--format", "speedscope", "--output", str(path),
             "--rate", "100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        running[name] = (popen, path)
    time.sleep(1.0)   # py-spy attaches before the load starts
    return running


def stop_profiles(running: dict[str, tuple[subprocess.Popen, Path]]) -> dict[str, Any]:
    import signal

    summaries: dict[str, Any] = {}
    for name, (popen, path) in running.items():
        popen.send_signal(signal.SIGINT)   # py-spy writes its file on Ctrl-C
        try:
            _, stderr = popen.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            popen.kill()
            _, stderr = popen.communicate()
        if not path.is_file():
            summaries[name] = {"error": f"py-spy wrote nothing (exit {popen.returncode}): {stderr.strip()[-300:]}"}
            continue
        summaries[name] = {"file": path.name, "kib": round(path.stat().st_size / 1024),
                           **summarise_profile(json.loads(path.read_text()))}
    return summaries


# Functions that only wait (a lock, a queue, a poll). py-spy's idle detection misses most of their
# samples here (it reads the threads' states, which in this container rarely say sleeping), so they
# are left out of the ranking and their share is reported on its own.
WAITING = {("Condition.wait", "threading.py"), ("Event.wait", "threading.py"), ("_worker", "thread.py"),
           ("EpollSelector.select", "selectors.py"), ("_PollLikeSelector.select", "selectors.py"),
           ("_serve", "_server.py")}


def waiting_share(speedscope: dict[str, Any]) -> float:
    """The share of samples whose innermost frame is one of WAITING."""
    frames = speedscope["shared"]["frames"]
    waiting = total = 0.0
    for profile in speedscope["profiles"]:
        for stack, weight in zip(profile.get("samples", []), profile.get("weights", [])):
            if stack:
                total += weight
                frame = frames[stack[-1]]
                waiting += weight * ((frame.get("name"), Path(frame.get("file", "")).name) in WAITING)
    return round(waiting / total, 3) if total else 0.0


def top_self_frames(speedscope: dict[str, Any], count: int = 10) -> list[dict[str, Any]]:
    """The `count` functions with the most self time (the innermost frame of each sample, its lines
    taken together), over all threads' profiles, with their share of the samples that were not
    waiting (WAITING)."""
    frames = speedscope["shared"]["frames"]
    self_weight: Tally[tuple[str, str]] = Tally()
    lines: dict[tuple[str, str], Tally[int]] = {}
    total = 0.0
    for profile in speedscope["profiles"]:
        for stack, weight in zip(profile.get("samples", []), profile.get("weights", [])):
            if not stack:
                continue
            frame = frames[stack[-1]]
            key = (frame.get("name", "?"), frame.get("file", "?"))
            if (key[0], Path(key[1]).name) in WAITING:
                continue
            self_weight[key] += weight
            lines.setdefault(key, Tally())[frame.get("line", 0)] += weight
            total += weight
    rows = []
    for key, weight in self_weight.most_common(count):
        line = lines[key].most_common(1)[0][0]   # the line that took most of it
        rows.append({"frame": key[0], "where": f"{Path(key[1]).name}:{line}",
                     "share": round(weight / total, 3) if total else 0.0})
    return rows


def summarise_profile(speedscope: dict[str, Any]) -> dict[str, Any]:
    return {"waiting_share": waiting_share(speedscope), "top_self": top_self_frames(speedscope)}


# --- the run -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(args: argparse.Namespace, stamp: str) -> dict[str, Any]:
    task = TASK_OF[args.exam_type]
    spec = __import__(f"services.{task}.spec", fromlist=["SPEC"]).SPEC
    images, source = load_images(args.exam_type, args.images)
    results: dict[str, Any] = {"exam_type": args.exam_type, "task": task, "images": source,
                               "image_bytes_mean": round(sum(map(len, images)) / len(images)),
                               "diagnoses": args.diagnoses, "concurrency": args.concurrency}

    print(f"[{task}] model alone: CPU per image, one thread, batch 1; ceiling ...", flush=True)
    results["model_alone"] = cpu_costs(spec.model_dir, spec, images[0], runs=args.model_runs)
    results["ceiling"] = ceiling(spec.model_dir, spec, args.ceiling_seconds, batch_sizes=(1,))

    with tempfile.TemporaryDirectory(prefix="drtech-cpu-") as scratch, processes() as running:
        home = Path(scratch) / "home"
        auth = start_process("auth", ["-m", "services.auth", "--port", "0"], {
            "DRTECH_HOME": str(home), "DRTECH_AUTH_ARGON2_TIME_COST": "1",
            "DRTECH_AUTH_ARGON2_MEMORY_KIB": "8192", "DRTECH_AUTH_ARGON2_PARALLELISM": "1",
        })
        running.append(auth)
        metrics_port = free_port()
        service = start_process(task, ["-m", f"services.{task}", "--port", "0"],
                                serving_env(port=0, metrics_port=metrics_port,
                                            refuse_unreadable=int("generated" not in source)))
        running.append(service)
        gateway = start_process("gateway", ["-m", "gateway", "--port", "0"], {
            "DRTECH_HOME": str(home), "DRTECH_AUTH_ADDR": auth.address,
            "DRTECH_ROUTER_ADDR": "127.0.0.1:9",   # unused: the exam type is named
            "DRTECH_GATEWAY_INTERNAL_PORT": "0",   # a free one: 8001 may be another gateway's
            f"DRTECH_{task.upper()}_ADDR": service.address,
        })
        running.append(gateway)
        internal = gateway.popen.stdout.readline().split(" on ", 1)[1].split()[0]   # "internal endpoints on URL (...)"
        watched = {"gateway": Watched(gateway, f"{internal}/metrics"), "auth": Watched(auth),
                   "model service": Watched(service, f"http://127.0.0.1:{metrics_port}/metrics")}

        print(f"[{task}] {args.diagnoses} diagnoses at concurrency {args.concurrency} ...", flush=True)
        load = asyncio.run(drive(gateway.address, args.exam_type, images, args.diagnoses, args.concurrency,
                                 between=lambda: {name: w.snapshot() for name, w in watched.items()}))
        after = {name: w.snapshot() for name, w in watched.items()}
        if load["refused_images"]:
            results["images"] = f"{source}, {load['refused_images']} refused by the model's gate and left out"
        done = len(load["latencies"])
        if not done:
            raise RuntimeError(f"no diagnosis succeeded: {load['errors'][:3]}")
        processes_ms: dict[str, Any] = {}
        for name, before in load["snapshot"].items():
            row: dict[str, Any] = {"cpu_ms": round(1000 * (after[name]["total"] - before["total"]) / done, 3),
                                   "threads_ms": per_diagnosis_ms(before["threads"], after[name]["threads"], done)}
            if "stages" in before:
                row["stages_ms"] = per_diagnosis_ms(before["stages"], after[name]["stages"], done)
            processes_ms[name] = row
        # The ceiling again after the load: on a shared machine the higher of the two is the stricter reference.
        results["ceiling"] = recheck_ceiling(spec.model_dir, spec, args.ceiling_seconds, results["ceiling"])
        platform_ms = sum(row["cpu_ms"] for row in processes_ms.values())
        model_ms = results["model_alone"]["model_cpu_ms"]
        timing = latency_row(load["latencies"], load["seconds"])
        results.update({
            "processes": processes_ms,
            "router": "not used: the exam type is named",
            "platform_cpu_ms": round(platform_ms, 2),
            "platform_over_model": round(platform_ms / model_ms, 2),
            "load": {**timing, "completed": done, "errors": len(load["errors"]), "first_errors": load["errors"][:3],
                     "seconds": round(load["seconds"], 2),
                     "gateway_over_ceiling": round(timing["images_per_s"] / results["ceiling"]["images_per_s"], 2)},
            "load_generator": {"cpu_ms": round(1000 * load["client_cpu_seconds"] / done, 2),
                               "cores": round(load["client_cpu_seconds"] / load["seconds"], 2)},
        })

        results["blob_put_alone"] = blob_put_alone(home / "blob-reference", results["image_bytes_mean"] + 16)

        py_spy = find_py_spy() if args.profile_diagnoses > 0 else None
        if args.profile_diagnoses > 0 and not py_spy:
            results["profile"] = {"error": "py-spy not found (pip install py-spy; the bench extra has it)"}
        elif py_spy:
            print(f"[{task}] {args.profile_diagnoses} more diagnoses under py-spy ...", flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            profiling = start_profiles(py_spy, {"gateway": gateway.popen.pid, "model-service": service.popen.pid},
                                       args.out, stamp)
            try:
                asyncio.run(drive(gateway.address, args.exam_type, images, args.profile_diagnoses, args.concurrency))
            finally:
                results["profile"] = stop_profiles(profiling)
    return results


# --- report --------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    model = r["model_alone"]
    load = r["load"]
    lines = [f"# CPU per diagnosis {report['measured_at']}", "", f"Machine: `{json.dumps(report['machine'])}`", "",
             f"{r['diagnoses']} diagnoses of {r['exam_type']} ({r['task']} model) at concurrency {r['concurrency']} "
             f"through the gateway; images: {r['images']} (mean {r['image_bytes_mean']} bytes). "
             "The load generator runs on the same cores.", "",
             "| process | CPU ms / diagnosis | by thread (ms) | by stage (ms) |", "|---|---|---|---|"]
    for name, row in r["processes"].items():
        threads = ", ".join(f"{key} {value}" for key, value in row["threads_ms"].items() if abs(value) >= 0.005)
        stages = ", ".join(f"{key} {value}" for key, value in row.get("stages_ms", {}).items())
        lines.append(f"| {name} | {row['cpu_ms']:.2f} | {threads} | {stages or '-'} |")
    lines += [f"| router | - | {r['router']} | |",
              f"| **platform** | **{r['platform_cpu_ms']:.2f}** | | |",
              f"| model alone (ONNX Runtime, 1 thread, batch 1) | {model['model_cpu_ms']:.2f} | | "
              f"decode + preprocess of the first image alone: {model['decode_and_preprocess_cpu_ms']} |",
              f"| load generator (not platform) | {r['load_generator']['cpu_ms']:.2f} | "
              f"{r['load_generator']['cores']} cores | |",
              f"| a blob stored alone (LocalBlobStore.put, one thread; the disk's share of `store`) | "
              f"{r['blob_put_alone']['cpu_ms']:.2f} | wall {r['blob_put_alone']['wall_ms']} ms | "
              f"{r['blob_put_alone']['file_system']} |", "",
              f"Platform / model CPU: **{r['platform_over_model']}x**. Throughput {load['images_per_s']} images/s "
              f"against a model-only ceiling of {r['ceiling']['images_per_s']} ({r['ceiling']['best']}; before the "
              f"load {r['ceiling'].get('first_images_per_s')}, after {r['ceiling'].get('recheck_images_per_s')}): "
              f"**{load['gateway_over_ceiling']}**. Latency mean {load['mean_ms']} ms, p50 {load['p50_ms']}, "
              f"p99 {load['p99_ms']}, p99 / mean **{load['p99_over_mean']}**. {load['completed']} completed, "
              f"{load['errors']} errors.", ""]
    profile = r.get("profile")
    if profile and "error" in profile:
        lines += [f"Not profiled: {profile['error']}", ""]
    elif profile:
        for name, found in profile.items():
            if "error" in found:
                lines += [f"Profile of {name}: {found['error']}", ""]
                continue
            lines += [f"## Profile: {name} (`{found['file']}`, {found['kib']} KiB, py-spy, all threads)", "",
                      f"{found['waiting_share']:.0%} of the samples were waiting (a lock, a queue, a poll) and "
                      "are left out; the shares are of the rest.", "",
                      "| self share | function | where (its busiest line) |", "|---|---|---|"]
            lines += [f"| {row['share']:.1%} | `{row['frame']}` | {row['where']} |" for row in found["top_self"]]
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exam-type", choices=sorted(TASK_OF), default="chest_xray")
    parser.add_argument("--diagnoses", type=int, default=800)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--images", type=int, default=40, help="different images to cycle through")
    parser.add_argument("--profile-diagnoses", type=int, default=400,
                        help="diagnoses of the py-spy pass (0: no profile)")
    parser.add_argument("--model-runs", type=int, default=100, help="runs of the model alone for its CPU per image")
    parser.add_argument("--ceiling-seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    for name in ("diagnoses", "concurrency", "images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    machine = describe_machine()
    started = time.perf_counter()
    results = run(args, stamp)
    report = {"measured_at": stamp, "machine": machine, "results": results,
              "wall_seconds": round(time.perf_counter() - started, 1)}
    text = markdown(report)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"cpu-{stamp}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"cpu-{stamp}.md").write_text(text)
    print(f"wrote {args.out / f'cpu-{stamp}'}.json and .md ({report['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
