"""The gateway (in process, Starlette's TestClient) with a backend address where nothing listens: its
real gRPC channel fails to connect, and the pages say so."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings


def test_when_the_auth_service_does_not_answer_account_pages_say_so_instead_of_asking_to_log_in(
    tmp_path: Path,
) -> None:
    """Sending a signed-in user to log in while auth is down would only fail again there (503)."""
    import socket

    with socket.socket() as probe:           # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    settings = GatewaySettings(DRTECH_HOME=tmp_path, auth_addr=f"127.0.0.1:{closed}", auth_timeout_s=2)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        client.cookies.set(settings.cookie_name, "a-session-token")
        for path in ("/app", "/history", "/results/abc"):
            reply = client.get(path, follow_redirects=False)
            assert reply.status_code == 503, path
            assert "sign-in service is not answering" in reply.text
        home = client.get("/")                # public pages still show, signed out
        assert home.status_code == 200 and 'data-signed-in="false"' in home.text
