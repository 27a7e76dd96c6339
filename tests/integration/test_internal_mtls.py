"""DRTECH_INTERNAL_MTLS=1: every internal gRPC hop is mutual TLS (services/common/tls.py).

The whole platform runs in this process (tests/web_stack.py) with certificates from a throwaway CA
(`ensure_certificates`, as `make run` makes them). Its gRPC ports then answer only callers holding a
certificate from that CA: the gateway does, end to end; a plaintext client and a client whose
certificate comes from another CA get nothing, Health included.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.grpc_clients import Backend, check_backend, open_channel
from protos.drtech.v1 import auth_pb2, auth_pb2_grpc, diagnosis_pb2, diagnosis_pb2_grpc
from services import supervisor
from services.common import healthcheck
from services.core.server import start_server
from services.core.settings import ServingSettings
from services.common.tls import InternalTLS, InternalTLSSettings, ensure_certificates, load, make_ca, make_leaf
from services.supervisor import Component
from tests.integration.test_gateway_api import bearer, upload
from tests.support import jpeg_bytes, synthetic_image
from tests.web_stack import Stack, running_stack

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def tls_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A DRTECH_HOME holding the throwaway CA and certificates, with the switch on for the module."""
    home = tmp_path_factory.mktemp("drtech-home")
    ensure_certificates(home, ("auth", "bone", "skin", "pneumonia", "router", "gateway", "probe"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DRTECH_INTERNAL_MTLS", "1")
        env.setenv("DRTECH_HOME", str(home))
        for name in ("DRTECH_INTERNAL_TLS_CERT", "DRTECH_INTERNAL_TLS_KEY", "DRTECH_INTERNAL_TLS_CA"):
            env.delenv(name, raising=False)
        yield home


@pytest.fixture(scope="module")
def stack(tls_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tls_home, tmp_path_factory.mktemp("models")) as running:
        yield running


def gateway_tls(home: Path) -> InternalTLS:
    tls = load("gateway", InternalTLSSettings(DRTECH_HOME=home))
    assert tls is not None
    return tls


def other_ca_tls() -> InternalTLS:
    """A certificate named like the gateway's, from a CA the platform has never seen."""
    ca_cert, ca_key = make_ca("someone else's CA")
    cert, key = make_leaf(ca_cert, ca_key, "gateway")
    return InternalTLS(cert, key, ca_cert)


def health_code(channel: grpc.Channel) -> grpc.StatusCode | str:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    except grpc.RpcError as error:
        return error.code()
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def backend_targets(stack: Stack) -> dict[str, str]:
    return {"auth": stack.auth_addr, **{name: server.target for name, server in stack.models.items()}}


def test_make_run_certificates_keep_their_keys_private_and_are_made_once(tmp_path: Path) -> None:
    written = ensure_certificates(tmp_path, ("bone", "gateway"))
    folder = tmp_path / "tls"
    assert {p.name for p in written} == {"ca.crt", "ca.key", "bone.crt", "bone.key",
                                         "gateway.crt", "gateway.key"}
    for key in ("ca.key", "bone.key", "gateway.key"):
        assert stat.S_IMODE(os.stat(folder / key).st_mode) == 0o600
    assert ensure_certificates(tmp_path, ("bone", "gateway")) == []   # kept on the next `make run`
    (folder / "bone.crt").unlink()
    assert [p.name for p in ensure_certificates(tmp_path, ("bone", "gateway"))] == ["bone.crt", "bone.key"]


def test_the_switch_on_with_a_missing_file_is_a_clear_error_not_plaintext(tmp_path: Path) -> None:
    settings = InternalTLSSettings(mtls=True, DRTECH_HOME=tmp_path)
    with pytest.raises(ValueError, match=r"bone\.crt \(DRTECH_INTERNAL_TLS_CERT\) cannot be read"):
        load("bone", settings)
    assert load("bone", InternalTLSSettings(mtls=False, DRTECH_HOME=tmp_path)) is None


def test_a_model_service_that_cannot_read_its_certificate_does_not_start(
    tmp_path: Path, stack: Stack
) -> None:
    spec = stack.models["bone_xray"].spec
    with pytest.raises(OSError, match="DRTECH_INTERNAL_TLS_KEY"):
        start_server(spec, ServingSettings(metrics_port=0), port=0, load=False,
                     tls_settings=InternalTLSSettings(mtls=True, tls_key=tmp_path / "missing.key",
                                                      DRTECH_HOME=stack.home))


def test_every_backend_answers_a_client_of_the_internal_ca(stack: Stack) -> None:
    credentials = gateway_tls(stack.home).channel_credentials()
    for name, target in backend_targets(stack).items():
        with grpc.secure_channel(target, credentials) as channel:
            assert health_code(channel) == "SERVING", name


def test_a_plaintext_client_gets_nothing_from_any_backend_health_included(stack: Stack) -> None:
    for name, target in backend_targets(stack).items():
        with grpc.insecure_channel(target) as channel:
            assert health_code(channel) == grpc.StatusCode.UNAVAILABLE, name
    with grpc.insecure_channel(stack.models["bone_xray"].target) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            diagnosis_pb2_grpc.DiagnosisServiceStub(channel).Diagnose(
                diagnosis_pb2.DiagnoseRequest(image=b"\xff\xd8"), timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(stack.auth_addr) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            auth_pb2_grpc.AuthServiceStub(channel).LogIn(
                auth_pb2.LogInRequest(email="a@example.org", password="x"), timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_certificate_from_another_ca_is_refused(stack: Stack) -> None:
    outsider = other_ca_tls()
    # It trusts our CA (so the server's certificate checks out) but presents its own.
    mixed = grpc.ssl_channel_credentials(gateway_tls(stack.home).ca, outsider.key, outsider.certificate)
    for name, target in backend_targets(stack).items():
        with grpc.secure_channel(target, mixed) as channel:
            assert health_code(channel) == grpc.StatusCode.UNAVAILABLE, name


def test_the_probe_checks_health_over_mtls(stack: Stack) -> None:
    port = int(stack.models["bone_xray"].target.rsplit(":", 1)[1])
    assert healthcheck.main(["--port", str(port)]) == 0       # the "probe" certificate of tls_home
    assert healthcheck.check(f"127.0.0.1:{port}", component="absent").startswith("DRTECH_INTERNAL_MTLS is on")


def test_a_diagnosis_goes_through_the_gateway_end_to_end(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        headers = bearer(client)        # sign-up and log-in: the gateway to auth
        image = jpeg_bytes(synthetic_image("bone_xray", (256, 240), 0))
        reply = upload(client, headers, image, "bone_xray")
        assert reply.status_code == 201, reply.text
        assert reply.json()["status"] == "completed"
        assert client.get("/readyz").status_code == 200   # every backend's health, over mTLS


def test_make_run_adds_its_own_certificate_and_sees_the_services_healthy_over_mtls(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "_probe_tls", None)
    bone = Component("bone", "services.bone", int(stack.models["bone_xray"].target.rsplit(":", 1)[1]), "grpc")
    assert not supervisor.healthy(bone)          # no client certificate yet: refused
    supervisor.prepare_internal_tls(stack.home)  # the CA is kept; the supervisor's certificate is added
    assert (stack.home / "tls" / "supervisor.key").exists()
    assert supervisor.healthy(bone)


def test_make_run_refuses_one_certificate_for_every_component(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRTECH_INTERNAL_MTLS", "1")
    monkeypatch.setenv("DRTECH_INTERNAL_TLS_CERT", str(tmp_path / "one.crt"))
    with pytest.raises(SystemExit, match="unset DRTECH_INTERNAL_TLS_CERT"):
        supervisor.prepare_internal_tls(tmp_path)


def test_the_gateway_accepts_only_the_component_it_asked_for(stack: Stack) -> None:
    """Every certificate names its component: a bone service answering at the auth address (a
    mixed-up address, or a stolen bone key) is refused by the gateway's auth channel."""
    tls = gateway_tls(stack.home)

    async def health_via(component: str) -> str:
        channel = open_channel(stack.models["bone_xray"].target, 1024 * 1024, 5.0, tls, component)
        try:
            return await check_backend(Backend(component, stack.models["bone_xray"].target, channel), TIMEOUT)
        finally:
            await channel.close()

    assert asyncio.run(health_via("bone")) == "SERVING"
    assert asyncio.run(health_via("auth")).endswith("(UNAVAILABLE)")
