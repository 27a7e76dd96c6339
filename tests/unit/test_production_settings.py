"""DRTECH_ENV=production refuses the development defaults (services/common/production.py): SQLite or no
database URL, a trusted-proxy range wider than 256 addresses (a pod network, 10.0.0.0/8,
0.0.0.0/0, '*'), a session cookie without Secure. The auth service and the gateway refuse at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import GatewaySettings
from services.auth.settings import AuthSettings
from services.common.production import settings_error_line

POSTGRES = "postgresql+psycopg://drtech@db.drtech.svc:5432/drtech"


def production_gateway(tmp_path: Path, **values: object) -> GatewaySettings:
    settings = {"DRTECH_HOME": tmp_path, "DRTECH_ENV": "production", "database_url": POSTGRES,
                "forwarded_allow_ips": "10.244.7.0/24", "blob_store": "s3", "s3_bucket": "drtech-uploads"}
    return GatewaySettings(**{**settings, **values})


def refusal(error: pytest.ExceptionInfo[ValidationError]) -> str:
    line = settings_error_line(error.value)
    assert "\n" not in line, "a refusal is one line"
    assert "DRTECH_ENV=production refuses development settings" in line
    return line


def test_a_production_gateway_with_postgresql_a_narrow_proxy_range_and_secure_cookies_starts(
    tmp_path: Path,
) -> None:
    settings = production_gateway(tmp_path, forwarded_allow_ips="10.244.7.0/24,192.0.2.10,2001:db8::/120")
    assert settings.cookie_secure is True
    assert settings.database_url == POSTGRES


@pytest.mark.parametrize("url", ["", "sqlite:///var/gateway.db", "sqlite+pysqlite:////tmp/x.db"])
def test_a_production_gateway_refuses_sqlite_or_no_database_url(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValidationError) as error:
        production_gateway(tmp_path, database_url=url)
    line = refusal(error)
    assert "DRTECH_GATEWAY_DATABASE_URL is " + ("empty" if not url else "SQLite") in line
    assert "PostgreSQL" in line


def test_a_production_gateway_refuses_a_database_url_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as error:
        production_gateway(tmp_path, database_url="db.drtech.svc:5432")
    assert "DRTECH_GATEWAY_DATABASE_URL is not a database URL" in refusal(error)


@pytest.mark.parametrize("proxies", [
    "*",                          # anyone
    "0.0.0.0/0",                  # anyone, spelt as a network
    "10.0.0.0/8",                 # a private range
    "10.244.0.0/16",              # the whole pod network (kubeadm/flannel, kind, minikube)
    "127.0.0.1,10.42.0.0/16",     # one wide entry among narrow ones (k3s' pod network)
    "10.244.0.0/23",              # 512 addresses: just past the rule
    "fd00:10:244::/64",           # IPv6 wider than /120
])
def test_a_production_gateway_refuses_a_trusted_proxy_range_wider_than_256_addresses(
    tmp_path: Path, proxies: str
) -> None:
    with pytest.raises(ValidationError) as error:
        production_gateway(tmp_path, forwarded_allow_ips=proxies)
    assert "DRTECH_GATEWAY_FORWARDED_ALLOW_IPS" in refusal(error)


def test_the_widest_trusted_proxy_range_production_accepts_is_256_addresses(tmp_path: Path) -> None:
    assert production_gateway(tmp_path, forwarded_allow_ips="10.244.3.0/24").forwarded_allow_ips == "10.244.3.0/24"
    assert production_gateway(tmp_path, forwarded_allow_ips="2001:db8::100/120")


def test_development_still_accepts_the_wide_defaults(tmp_path: Path) -> None:
    """Only production refuses them: a laptop or a dev cluster keeps SQLite and the pod network."""
    settings = GatewaySettings(DRTECH_HOME=tmp_path, forwarded_allow_ips="10.244.0.0/16", cookie_secure=False)
    assert settings.database_url.startswith("sqlite:///") and settings.cookie_secure is False
    assert AuthSettings(DRTECH_HOME=tmp_path).database_url.startswith("sqlite:///")


def test_a_production_gateway_refuses_a_session_cookie_without_secure(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as error:
        production_gateway(tmp_path, cookie_secure=False)
    assert "DRTECH_GATEWAY_COOKIE_SECURE is off" in refusal(error)


def test_a_production_gateway_refuses_uploads_on_the_pods_own_disk(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as error:
        production_gateway(tmp_path, blob_store="local")
    assert "DRTECH_GATEWAY_BLOB_STORE is local" in refusal(error)


def test_an_s3_blob_store_needs_a_bucket_and_a_prefix_that_ends_with_a_slash(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs DRTECH_GATEWAY_S3_BUCKET"):
        GatewaySettings(DRTECH_HOME=tmp_path, blob_store="s3")
    with pytest.raises(ValidationError, match="must end with '/'"):
        GatewaySettings(DRTECH_HOME=tmp_path, blob_store="s3", s3_bucket="b", s3_prefix="drtech")
    assert GatewaySettings(DRTECH_HOME=tmp_path).blob_store == "local"   # `make run` keeps files


def test_every_production_problem_is_named_in_the_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as error:
        production_gateway(tmp_path, database_url="", forwarded_allow_ips="*", cookie_secure=False,
                           blob_store="local")
    line = refusal(error)
    for variable in ("DRTECH_GATEWAY_DATABASE_URL", "DRTECH_GATEWAY_FORWARDED_ALLOW_IPS",
                     "DRTECH_GATEWAY_COOKIE_SECURE", "DRTECH_GATEWAY_BLOB_STORE"):
        assert variable in line


@pytest.mark.parametrize("url", ["", "sqlite:////var/lib/drtech/auth.db"])
def test_a_production_auth_service_refuses_sqlite_or_no_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("DRTECH_ENV", "production")
    monkeypatch.setenv("DRTECH_AUTH_DATABASE_URL", url)
    with pytest.raises(ValidationError) as error:
        AuthSettings(DRTECH_HOME=tmp_path)
    assert "DRTECH_AUTH_DATABASE_URL is " + ("empty" if not url else "SQLite") in refusal(error)
    monkeypatch.setenv("DRTECH_AUTH_DATABASE_URL", POSTGRES)
    assert AuthSettings(DRTECH_HOME=tmp_path).database_url == POSTGRES


def test_the_internal_port_is_never_the_public_one(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="internal_port"):
        GatewaySettings(DRTECH_HOME=tmp_path, DRTECH_HTTP_PORT=8000, internal_port=8000)
    assert GatewaySettings(DRTECH_HOME=tmp_path, DRTECH_HTTP_PORT=0, internal_port=0).internal_port == 0
