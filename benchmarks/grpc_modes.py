"""Server CPU per unary call of Python gRPC's two servers, the thread-pool one the model services run
and grpc.aio, with nothing else in the handler: what the model service's RPC plumbing costs alone.

    python -m benchmarks.grpc_modes [--calls 4000] [--concurrency 16] [--rounds 2]

Each server runs in a process of its own (8 worker threads for the thread-pool server, as
`DRTECH_SERVING_WORKER_THREADS` defaults; one event loop for aio) and answers a 7,196-byte request
(the X-ray `benchmarks.cpu_cost` sends) with 300 bytes; a grpc.aio client in this process keeps
`--concurrency` calls in flight over one channel. Two handlers: `plain` answers at once; `batcher`
hands each call to one of two threads and waits for its answer, as services/core/batching.py does
(a concurrent.futures.Future, awaited through asyncio.wrap_future on aio). Reported per server and
handler: the server process's CPU (user + system, /proc) per call and calls/s, alternating the two
servers round by round. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc

REQUEST_BYTES = 7196
REPLY = b"x" * 300
METHOD = "/bench.Bench/Call"


def _handlers(work: str) -> tuple:
    """(thread-pool handler, aio handler) for `work`."""
    if work == "plain":
        def answer(request: bytes, context: object) -> bytes:
            return REPLY

        async def answer_aio(request: bytes, context: object) -> bytes:
            return REPLY

        return answer, answer_aio
    jobs: queue.Queue[futures.Future] = queue.Queue()

    def run_jobs() -> None:
        while True:
            jobs.get().set_result(REPLY)

    for _ in range(2):
        threading.Thread(target=run_jobs, daemon=True).start()

    def handed_off(request: bytes, context: object) -> bytes:
        future: futures.Future = futures.Future()
        jobs.put(future)
        return future.result()

    async def handed_off_aio(request: bytes, context: object) -> bytes:
        future: futures.Future = futures.Future()
        jobs.put(future)
        return await asyncio.wrap_future(future)

    return handed_off, handed_off_aio


def serve(mode: str, port: int, work: str) -> None:
    handler, handler_aio = _handlers(work)
    service, method = METHOD.strip("/").split("/")
    if mode == "threads":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(handler)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        print("ready", flush=True)
        server.wait_for_termination()
        return

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(handler_aio)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


async def _load(port: int, calls: int, concurrency: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        payload = os.urandom(REQUEST_BYTES)

        async def caller(count: int) -> None:
            for _ in range(count):
                if await call(payload) != REPLY:
                    raise RuntimeError(f"the server at port {port} answered something else")

        await asyncio.gather(*(caller(calls // concurrency) for _ in range(concurrency)))


def measure(mode: str, work: str, calls: int, concurrency: int) -> tuple[float, float]:
    """(server CPU microseconds per call, calls per second)."""
    from benchmarks.cpu_cost import free_port
    from benchmarks.serving import Process

    port = free_port()
    command = [sys.executable, "-m", "benchmarks.grpc_modes", "--serve", mode, str(port), work]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as popen:   # closes the pipe, waits
        server = Process(mode, popen, f"127.0.0.1:{port}", 0.0)
        try:
            if popen.stdout is None or popen.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the {mode} server did not start")
            asyncio.run(_load(port, max(concurrency, calls // 5), concurrency))   # warm-up
            cpu, started = server.cpu_seconds(), time.perf_counter()
            asyncio.run(_load(port, calls, concurrency))
            seconds = time.perf_counter() - started
            done = calls // concurrency * concurrency
            return 1e6 * (server.cpu_seconds() - cpu) / done, done / seconds
        finally:
            popen.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", nargs=3, metavar=("MODE", "PORT", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.serve[2])
        return
    print("| handler | server | round | server CPU us/call | calls/s |\n|---|---|---|---|---|")
    for work in ("plain", "batcher"):
        for round_ in range(1, args.rounds + 1):
            for mode in (("threads", "aio") if round_ % 2 else ("aio", "threads")):
                cpu, rate = measure(mode, work, args.calls, args.concurrency)
                print(f"| {work} | {mode} | {round_} | {cpu:.1f} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
