"""Replicas of a model service behind one DNS name, called through the gateway's own channel.

What Kubernetes does on a scale-out, on loopback: three real `python -m services.bone` processes on
127.0.0.1, .2 and .3 (one port), a DNS server of the test's own (dnslib) whose A records for the
name the test changes, like a headless Service's as pods become ready, and the gateway's `Backends`
dialling `dns://<that server>/replicas.test:<port>`. Calls per replica are read from each
replica's own Prometheus /metrics. The replicas close connections after 2 s instead of the default
30 s (DRTECH_SERVING_MAX_CONNECTION_AGE_SECONDS) so the test takes seconds, not minutes; the
gateway's settings are its defaults.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import httpx
import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.grpc_clients import Backends
from gateway.settings import GatewaySettings
from protos.drtech.v1 import diagnosis_pb2, diagnosis_pb2_grpc
from tests.support import first_line, free_port, jpeg_bytes, launch, synthetic_image

NAME = "replicas.test"
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
CONNECTION_AGE_S = 2.0
START_TIMEOUT_S = 90.0        # three processes loading a real model at once on a busy machine
SPREAD_WITHIN_S = 20.0        # after the name grows to three records
FAIR_SHARE = 0.15             # of the calls in a window, for each replica
WINDOW_CALLS = 45             # calls a window must hold before shares are judged
CONCURRENT_CALLS = 4          # calls in flight at once, as a busy gateway makes them
# Larger than gRPC's default per-call retry buffer (256 KiB): a call that large is retried only
# because the gateway's channels keep a whole message.
IMAGE = jpeg_bytes(synthetic_image("bone_xray", size=(1024, 1024)))


class Zone(BaseResolver):
    """Answers A queries for NAME with `addresses` (changed by the test), NXDOMAIN for other names."""

    def __init__(self) -> None:
        self.addresses: tuple[str, ...] = ()

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        if str(request.q.qname).rstrip(".") != NAME:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            for address in self.addresses:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=1))
        return reply         # AAAA and the rest: no records


@contextmanager
def dns_server(zone: Zone) -> Iterator[int]:
    """A DNS server for `zone` on a free UDP port of 127.0.0.1 (three A records fit in UDP)."""
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=DNSLogger(logf=lambda _line: None))
    server.start_thread()
    try:
        yield server.server.server_address[1]
    finally:
        server.stop()
        server.server.server_close()


@dataclass
class Replica:
    host: str
    metrics_port: int
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)

    def keep_log(self) -> None:
        """Read stderr in the background: a full pipe would stall the process."""
        threading.Thread(target=lambda: self.log.extend(self.process.stderr), daemon=True).start()


def start_replicas(port: int) -> list[Replica]:
    replicas = []
    for host in HOSTS:
        metrics_port = free_port()
        env = {
            "DRTECH_SERVING_METRICS_PORT": str(metrics_port),
            "DRTECH_SERVING_MAX_CONNECTION_AGE_SECONDS": str(CONNECTION_AGE_S),
            "DRTECH_SERVING_MODEL_WORKERS": "1",
            "DRTECH_SERVING_WARMUP_RUNS": "1",
            # The calls carry a generated image, which bone's gate rightly refuses; this test is
            # about where calls go, so the replicas diagnose whatever they get.
            "DRTECH_SERVING_REFUSE_UNREADABLE": "false",
        }
        process = launch("bone", env, "--host", host, "--port", str(port))
        replicas.append(Replica(host, metrics_port, process))
    for replica in replicas:
        line = first_line(replica.process, START_TIMEOUT_S)
        exited = replica.process.poll() is not None
        assert line.strip() == f"listening on {replica.host}:{port}", (
            line, replica.process.stderr.read() if exited else "(still running)"
        )
        replica.keep_log()
    return replicas


async def metric(client: httpx.AsyncClient, replica: Replica, name: str, **labels: str) -> float:
    """The sum of the replica's samples `name` with these labels, from its own /metrics."""
    reply = await client.get(f"http://{replica.host}:{replica.metrics_port}/metrics")
    reply.raise_for_status()
    return sum(
        sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items())
    )


async def diagnoses_answered(client: httpx.AsyncClient, replica: Replica) -> int:
    return int(await metric(client, replica, "drtech_serving_requests_total", method="Diagnose", code="OK"))


async def busy(client: httpx.AsyncClient, replica: Replica) -> bool:
    """Whether the replica is handling a call right now."""
    return await metric(client, replica, "drtech_serving_in_flight_requests") >= 1


@dataclass
class Load:
    """CONCURRENT_CALLS callers sending Diagnose without pause through the gateway's stub."""

    stub: diagnosis_pb2_grpc.DiagnosisServiceStub
    timeout_s: float
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    running: bool = True
    killed: bool = False
    # Per caller: calls it started after `killed` was set and that have ended.
    ended_after_kill: Counter[int] = field(default_factory=Counter)

    async def caller(self, number: int) -> None:
        request = diagnosis_pb2.DiagnoseRequest(image=IMAGE, media_type="image/jpeg")
        while self.running:
            after_kill = self.killed
            try:
                await self.stub.Diagnose(request, timeout=self.timeout_s)
                self.ok += 1
            except grpc.aio.AioRpcError as error:
                self.failures.append(f"{error.code().name}: {error.details()}")
            if after_kill:
                self.ended_after_kill[number] += 1

    def calls_from_before_the_kill_ended(self) -> bool:
        """Each caller has one call at a time: once each has ended one call started after the kill,
        every call that was in flight at the kill has ended too. Two, to be past the retries."""
        return all(self.ended_after_kill[number] >= 2 for number in range(CONCURRENT_CALLS))


async def counts(client: httpx.AsyncClient, replicas: list[Replica]) -> Counter[str]:
    answered = await asyncio.gather(*(diagnoses_answered(client, replica) for replica in replicas))
    return Counter(dict(zip((replica.host for replica in replicas), answered, strict=True)))


async def until(
    condition: Callable[[], bool | Awaitable[bool]], timeout_s: float, every_s: float = 0.5
) -> bool:
    """Whether `condition` held within `timeout_s`, asked every `every_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return True
        await asyncio.sleep(every_s)
    return False


async def scale_out_and_kill_one(zone: Zone, dns_port: int, port: int, replicas: list[Replica]) -> None:
    # One record: every call goes to the one replica it names, the others stand idle.
    zone.addresses = HOSTS[:1]
    settings = GatewaySettings(DRTECH_BONE_ADDR=f"dns://127.0.0.1:{dns_port}/{NAME}:{port}")
    backends = Backends(settings)   # the gateway's channels, built by the gateway's own code
    load = Load(backends.models["bone"], settings.diagnose_timeout_s)
    callers = [asyncio.create_task(load.caller(number)) for number in range(CONCURRENT_CALLS)]
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            assert await until(lambda: load.ok >= 20, START_TIMEOUT_S), load.failures
            before = await counts(client, replicas)
            assert before[HOSTS[0]] >= 20 and before[HOSTS[1]] == before[HOSTS[2]] == 0, before

            # The name grows to three records: within SPREAD_WITHIN_S each replica answers at least
            # FAIR_SHARE of the calls of a window of WINDOW_CALLS calls or more.
            zone.addresses = HOSTS
            windows: list[Counter[str]] = []
            start = await counts(client, replicas)

            async def spread() -> bool:
                nonlocal start
                now = await counts(client, replicas)
                window = now - start
                if window.total() < WINDOW_CALLS:
                    return False
                windows.append(window)
                start = now
                return all(window[host] >= FAIR_SHARE * window.total() for host in HOSTS)

            assert await until(spread, SPREAD_WITHIN_S, every_s=1.0), f"calls by window: {windows}"

            # kill -9 one replica while it handles a call (which dies with it): no call fails.
            assert await until(lambda: busy(client, replicas[2]), 30, every_s=0.05)
            load.killed = True
            replicas[2].process.send_signal(signal.SIGKILL)
            replicas[2].process.wait(timeout=10)
            assert await until(load.calls_from_before_the_kill_ended, 60), load.ended_after_kill
            after = await counts(client, replicas[:2])
            assert after[HOSTS[0]] > start[HOSTS[0]] and after[HOSTS[1]] > start[HOSTS[1]], (start, after)
    finally:
        load.running = False
        await asyncio.gather(*callers, return_exceptions=True)
        await backends.close()
    assert load.failures == [], f"{len(load.failures)} of {load.ok + len(load.failures)} calls failed"


def loopback_aliases_missing() -> str:
    """Why the replicas' addresses cannot be bound here, or "" (Linux routes all of 127/8 to lo)."""
    for host in HOSTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, 0))
            except OSError as error:
                return f"cannot listen on {host} ({error}); on macOS: sudo ifconfig lo0 alias {host}"
    return ""


@pytest.mark.timeout(300)
def test_calls_spread_over_replicas_as_the_name_grows_and_survive_a_killed_replica() -> None:
    if reason := loopback_aliases_missing():
        pytest.skip(reason)
    zone = Zone()
    port = free_port()
    replicas: list[Replica] = []
    with dns_server(zone) as dns_port:
        try:
            replicas = start_replicas(port)
            asyncio.run(scale_out_and_kill_one(zone, dns_port, port, replicas))
        finally:
            for replica in replicas:
                if replica.process.poll() is None:
                    replica.process.kill()
                    replica.process.wait()
