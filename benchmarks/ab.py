"""Two versions of the serving path side by side: the same load on each, interleaved, in one run.

    python -m benchmarks.ab --before ../perf-base [--after ../perf-next] [--task pneumonia]
        [--rounds 4] [--seconds 4] [--paths service gateway fetch] [--gray] [--image FILE]
        [--serving NAME=VALUE ...]

`--before` is another checkout of this project (e.g. `git worktree add --detach ../perf-base main`,
then `make protos` in it); "after" is this one, or `--after` (a change measured against the commit
before it, with this checkout's load generator). Both stacks (auth, one model service, gateway) start
at once from their own folders and stay up; each round measures every path at concurrency 16 on
`before` and `after` in turn, alternating which goes first, so a machine that gets busier or quieter
during the run shifts both sides alike. Only the side being measured has work; the other idles.

Paths: `service` (Diagnose straight at the model service), `gateway` (uploads through the
gateway), `fetch` (one upload, then its stored image fetched again and again through the gateway:
an audited access each). Prints, per path and side, images (or fetches)/s, p50 and p99 latency,
the CPU each server process spent per image, and the load generator's own CPU (client cores) of
every round, and the medians. On a shared machine compare
the two sides of one run, never figures of different runs. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.serving import (
    EXAM_TYPES, ROOT, TASKS, Process, fetch_loads, gateway_loads, grpc_loads, processes, sample_jpeg,
    serving_env, start_process,
)


def start_stack(side: str, cwd: Path, home: Path, task: str, serving: dict[str, str],
                running: list[Process]) -> dict[str, Process]:
    """auth + the task's model service + gateway, all running the code in `cwd`."""
    auth = start_process(f"{side}-auth", ["-m", "services.auth", "--port", "0"], {
        "DRTECH_HOME": str(home), "DRTECH_AUTH_ARGON2_TIME_COST": "1",
        "DRTECH_AUTH_ARGON2_MEMORY_KIB": "8192", "DRTECH_AUTH_ARGON2_PARALLELISM": "1",
    }, cwd=cwd)
    running.append(auth)
    service = start_process(f"{side}-{task}", ["-m", f"services.{task}", "--port", "0"],
                            serving_env(port=0, **serving), cwd=cwd)
    running.append(service)
    gateway = start_process(f"{side}-gateway", ["-m", "gateway", "--port", "0"], {
        "DRTECH_HOME": str(home), "DRTECH_AUTH_ADDR": auth.address, "DRTECH_ROUTER_ADDR": "127.0.0.1:9",
        f"DRTECH_{task.upper()}_ADDR": service.address,
        # Two gateways at once: each picks a free internal (metrics) port; older sides ignore it.
        "DRTECH_GATEWAY_INTERNAL_PORT": "0",
    }, cwd=cwd)
    running.append(gateway)
    return {"auth": auth, "service": service, "gateway": gateway}


def measure(stack: dict[str, Process], path: str, task: str, image: bytes, seconds: float) -> dict[str, Any]:
    if path == "service":
        loads = grpc_loads(stack["service"].address, image, (16,), seconds, [stack["service"]])
    elif path == "fetch":
        loads = fetch_loads(stack["gateway"].address, EXAM_TYPES[task], image, (16,), seconds,
                            [stack["gateway"], stack["auth"]])
    else:
        loads = gateway_loads(stack["gateway"].address, EXAM_TYPES[task], image, (16,), seconds,
                              [stack["gateway"], stack["auth"], stack["service"]])
    return asyncio.run(loads)[0]


def process_name(name: str) -> str:
    """"before-gateway" -> "gateway": the same process of either side gets the same name."""
    return name.split("-", 1)[1]


def gray_jpeg(image: bytes) -> bytes:
    """The same picture as a one-channel JPEG (how radiographs usually arrive)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(image)).convert("L").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="the other checkout (its protos built)")
    parser.add_argument("--after", type=Path, default=ROOT,
                        help="the checkout measured as 'after' (default: this one); the load is this one's")
    parser.add_argument("--task", choices=TASKS, default="pneumonia")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per measurement")
    parser.add_argument("--paths", nargs="+", choices=("service", "gateway", "fetch"),
                        default=["service", "gateway"])
    parser.add_argument("--image", type=Path, help="image to send (default: the generated 1024x1024 JPEG)")
    parser.add_argument("--gray", action="store_true", help="send the image as a one-channel JPEG")
    parser.add_argument("--serving", nargs="*", default=[], metavar="NAME=VALUE",
                        help="serving settings for both model services")
    args = parser.parse_args(argv)

    image = args.image.read_bytes() if args.image else sample_jpeg()
    if args.gray:
        image = gray_jpeg(image)
    serving = dict(setting.split("=", 1) for setting in args.serving)
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="drtech-ab-") as scratch, processes() as running:
        stacks = {side: start_stack(side, cwd, Path(scratch) / side, args.task, serving, running)
                  for side, cwd in sides.items()}
        for round_index in range(args.rounds):
            order = list(sides) if round_index % 2 == 0 else list(sides)[::-1]
            for path in args.paths:
                for side in order:
                    row = measure(stacks[side], path, args.task, image, args.seconds)
                    rows.setdefault((path, side), []).append(row)
                    cpu = ", ".join(f"{process_name(name)} {ms}"
                                    for name, ms in row["server_cpu_ms_per_image"].items())
                    print(f"round {round_index + 1} {path:7s} {side:6s} {row['images_per_s']:6.1f} img/s  "
                          f"p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  "
                          f"client cores {row['client_cores']:.2f}  "
                          f"server CPU ms/image: {cpu}  errors {row['errors']}", flush=True)

    print(f"\n{args.task}, {len(image)} bytes JPEG{' (one channel)' if args.gray else ''}, concurrency 16, "
          f"{args.rounds} rounds x {args.seconds} s; medians:\n")
    print("| path | side | images/s | p50 ms | p99 ms | client cores | server CPU ms/image |")
    print("|---|---|---|---|---|---|---|")
    for (path, side), measured in rows.items():
        names = measured[0]["server_cpu_ms_per_image"]
        cpu = ", ".join(
            f"{process_name(name)} "
            f"{statistics.median(row['server_cpu_ms_per_image'][name] for row in measured):.1f}"
            for name in names
        )
        print(f"| {path} | {side} | {statistics.median(row['images_per_s'] for row in measured):.1f} | "
              f"{statistics.median(row['p50_ms'] for row in measured):.1f} | "
              f"{statistics.median(row['p99_ms'] for row in measured):.1f} | "
              f"{statistics.median(row['client_cores'] for row in measured):.2f} | {cpu} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
