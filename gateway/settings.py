"""Gateway settings (prefix ``DRTECH_GATEWAY_`` plus the shared ``DRTECH_*`` names), validated at start."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.production import database_problem, trusted_proxies_problem
from services.core.imaging import ImageLimits
from services.core.settings import ImageLimitSettings
from services.registry import model_specs

MIB = 1024 * 1024
# A Diagnose request carries the upload and a few fields besides (media type, request id, flags).
_MESSAGE_ROOM = 64 * 1024
# The multipart framing around an upload; bodies beyond max_upload_bytes + this are refused unread.
FORM_OVERHEAD_BYTES = 64 * 1024


class GatewaySettings(ImageLimitSettings):
    """The image limits (pixels, sides) are the model services' own (ImageLimitSettings)."""

    model_config = SettingsConfigDict(env_prefix="DRTECH_GATEWAY_", extra="ignore", populate_by_name=True)

    # Shared, unprefixed names (docs/architecture.md).
    home: Path = Field(default=Path("var"), validation_alias="DRTECH_HOME")
    env: Literal["development", "production"] = Field(default="development", validation_alias="DRTECH_ENV")
    http_port: int = Field(default=8000, ge=0, le=65535, validation_alias="DRTECH_HTTP_PORT")
    auth_addr: str = Field(default="127.0.0.1:50051", validation_alias="DRTECH_AUTH_ADDR")
    # Every model service the gateway calls, the router among them: name -> address, as JSON in
    # DRTECH_MODEL_ADDRS. By default each of the registry (services/registry.py) at 127.0.0.1 and its
    # default port. DRTECH_<NAME>_ADDR (DRTECH_BONE_ADDR, ...: what make run and deploy/k8s set)
    # replaces one entry. Which exam type each serves, the services say (gateway/model_catalog.py).
    model_addrs: dict[str, str] = Field(default_factory=lambda: default_model_addrs(),
                                        validation_alias="DRTECH_MODEL_ADDRS")
    max_message_bytes: int = Field(default=20 * MIB, ge=4096, validation_alias="DRTECH_MAX_MESSAGE_BYTES")

    host: str = "127.0.0.1"
    # The operational endpoints (/metrics, the detailed /readyz and /readyz/gateway, which name
    # internal addresses) are served on this second port, never on the public one: in Kubernetes
    # only the kubelet's probes and Prometheus reach it (deploy/k8s network policy). 0 picks a free
    # port. `internal_host` empty: the same address as `host`.
    internal_port: int = Field(default=8001, ge=0, le=65535)
    internal_host: str = ""
    # Where the model folders are (services/<task>/model/): the gateway serves the training plots
    # found there on the model cards. The image ships the whole project, so this is the default.
    models_dir: Path = Path(__file__).resolve().parent.parent / "services"
    # Proxies (comma-separated IP addresses or CIDR networks; "*" for anyone; in production each
    # entry at most 256 addresses, services/common/production.py)
    # whose X-Forwarded-For/-Proto uvicorn trusts, so the client IP passed to the auth service for
    # log-in throttling is the real one behind an ingress. Behind a k8s Ingress: the controller's
    # address range (deploy/k8s: INGRESS_CONTROLLER_CIDRS in drtech-config).
    forwarded_allow_ips: str = "127.0.0.1"
    # Any SQLAlchemy URL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/drtech.
    # Empty: a SQLite file at $DRTECH_HOME/gateway.db.
    database_url: str = ""
    # SQLAlchemy's connection pool per gateway process (PostgreSQL; SQLite ignores them): at most
    # db_pool_size + db_max_overflow connections, waiting up to db_pool_timeout_s for one beyond.
    # Budget: gateway maxReplicas x (pool + overflow) + auth's share <= max_connections - reserve
    # (deploy/k8s/README.md, "Database connections").
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)
    db_pool_timeout_s: float = Field(default=30.0, gt=0)
    # Migrate the schema at start-up (`make run`). Off in production, where a Job runs
    # `python -m gateway.migrate` with the migrator role first: the pod then waits up to
    # migration_wait_s for the schema to reach this release's head, and refuses to start otherwise.
    run_migrations: bool = True
    migration_wait_s: float = Field(default=120.0, ge=0)

    # Where uploads and heatmaps are kept: "local" files under DRTECH_HOME (one replica, or a
    # shared volume), or "s3": an S3-compatible bucket (AWS S3, SeaweedFS, MinIO), which every
    # replica shares. Credentials come from boto3's chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
    # or a web identity (EKS IRSA: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE).
    blob_store: Literal["local", "s3"] = "local"
    s3_bucket: str = ""
    # Empty: AWS S3 itself. SeaweedFS/MinIO: e.g. http://seaweedfs-s3.storage.svc:8333.
    s3_endpoint_url: str = ""
    # Empty: boto3's (AWS_REGION / AWS_DEFAULT_REGION).
    s3_region: str = ""
    # Keys start with this (ends with "/" or is empty); uploads under <prefix>uploads/, heatmaps
    # under <prefix>heatmaps/.
    s3_prefix: str = ""
    # "path" (http://host/bucket/key) for SeaweedFS and MinIO; "auto" lets boto3 choose (AWS).
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # Connect and read timeout of each S3 request (retried up to 3 times, boto3 "standard" mode).
    s3_timeout_s: float = Field(default=10.0, gt=0)

    # Largest accepted upload: what the model services accept (20 MiB, less room for the rest of the
    # gRPC message).
    max_upload_bytes: int = Field(default=20 * MIB - _MESSAGE_ROOM, ge=1024)
    # Image renders (DICOM /image, previews) at a time. Rendering the largest accepted DICOM (a 64 M
    # pixel colour image) took ~750 MB in a worker thread, measured, so a 1 GiB pod renders one at a time.
    concurrent_renders: int = Field(default=1, ge=1)
    # Uploads held in memory at once (read, sent to a model service, stored), bounded by bytes and by
    # count (gateway/upload_memory.py): each reserves three times its size (the bytes, the gRPC
    # request, its serialized form: ~60 MiB for the largest), so 240 MiB holds 4 of the largest, as
    # before, beside one render (up to ~880 MiB for the largest DICOM) in the gateway pod's 1.5 GiB,
    # and up to 8 ordinary X-rays: with 4 at a time whatever their size, 2 cores were a sixth idle at
    # 16 clients; 16 at a time gave 3 % more than 8 and a p99 a fifth longer (benchmarks/README.md,
    # "Issue 24, 2026-12-07 evening"). The rest wait their turn in the upload queue (below), in
    # arrival order, at most upload_wait_s: a queue that does not move in that long is overloaded,
    # and the upload gets 503 with Retry-After. 25 s and the 30 s model deadline answer within the
    # ingress's 60 s read timeout (deploy/k8s/base/ingress.yaml), never a proxy's 504.
    concurrent_uploads: int = Field(default=8, ge=1)
    upload_memory_bytes: int = Field(default=240 * MIB, ge=1024)
    upload_wait_s: float = Field(default=25.0, gt=0)
    # The upload queue (gateway/upload_queue.py): uploads being received or waiting for one of those
    # slots, bounded by count and by their declared sizes (Content-Length; the largest accepted body
    # when sent chunked). Past either bound, 503 with Retry-After before the body is read. A body
    # over 1 MiB is spooled to /tmp, one below stays in memory (Starlette's multipart spooling), so
    # the count bounds that memory (64 MiB at most) and the bytes bound the gateway pod's 512 Mi /tmp
    # (deploy/k8s), which the kubelet enforces by evicting the pod, and every request on it with it.
    # The defaults take 32 concurrent clients uploading ordinary images, and 19 of the largest (20 MiB each).
    pending_uploads: int = Field(default=64, ge=1)
    upload_queue_bytes: int = Field(default=384 * MIB, ge=1024)

    # A blob whose record is gone, or never came to be, while the records database was unreachable is
    # deleted once the database answers again, tried this often (gateway.blob_protocol).
    blob_forget_retry_s: float = Field(default=10.0, gt=0)

    # Verified sessions are cached (gateway/session_cache.py) for at most this many seconds (0: every
    # request asks the auth service), so a busy client does not cost an Authenticate call per request.
    # A log-out, log-out everywhere or password change made through this gateway takes effect here at
    # once; one made through another replica takes effect here within this many seconds.
    auth_cache_seconds: float = Field(default=5.0, ge=0)
    # At most this many cached sessions (a few hundred bytes each); the oldest goes first.
    auth_cache_entries: int = Field(default=10_000, ge=1)

    # gRPC deadlines, seconds. Every call has one.
    auth_timeout_s: float = Field(default=5.0, gt=0)
    diagnose_timeout_s: float = Field(default=30.0, gt=0)
    route_timeout_s: float = Field(default=15.0, gt=0)
    model_info_timeout_s: float = Field(default=5.0, gt=0)
    health_timeout_s: float = Field(default=2.0, gt=0)
    # A backend channel looks its DNS name up again when a connection closes (the servers close
    # each after max_connection_age), but not sooner than this after the last lookup. gRPC's own
    # default, 30 s, would hold a new pod back that long; one lookup per 5 s is nothing for DNS.
    grpc_dns_min_interval_s: float = Field(default=5.0, gt=0)

    # Audit trail (gateway/audit.py): events older than this many days are purged, every
    # audit_purge_interval_s and at start-up. Six years by default: HIPAA keeps its required
    # documentation six years (45 CFR 164.316(b)(2)(i)), and audit records are commonly kept as such.
    # At least 30 (gateway.audit.RETENTION_FLOOR_DAYS): the database refuses to delete younger rows.
    audit_retention_days: int = Field(default=6 * 365 + 2, ge=30)
    audit_purge_interval_s: float = Field(default=3600.0, gt=0)

    # Session cookie for the web UI. `cookie_secure` None means: on in production, off in development
    # (a local http://127.0.0.1 browser would otherwise never send it back).
    cookie_name: str = "drtech_session"
    cookie_secure: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_model_address_per_name(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        given = data.pop("DRTECH_MODEL_ADDRS", data.pop("model_addrs", None))
        addresses = dict(json.loads(given) if isinstance(given, str) else given or default_model_addrs())
        # Given here (a test's or a tool's keyword) before the environment, as for any setting.
        named = {**os.environ, **{key.upper(): value for key, value in data.items() if isinstance(key, str)}}
        for name in addresses:
            if model_addr_variable(name) in named:
                addresses[name] = named[model_addr_variable(name)]
        data["model_addrs"] = addresses
        return data

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses_or_networks(cls, value: str) -> str:
        # uvicorn takes an entry it cannot parse as a literal name that never matches a TCP peer,
        # so a typo would silently trust nobody: refuse it at start instead.
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        if entries == ["*"]:
            return "*"
        if not entries:
            raise ValueError("forwarded_allow_ips is empty; give IP addresses or networks (CIDR), or '*'")
        for entry in entries:
            try:
                ipaddress.ip_network(entry)   # strict: host bits set (10.244.1.0/16) is a mistake
            except ValueError:
                raise ValueError(
                    f"forwarded_allow_ips entry {entry!r} is not an IP address or network (CIDR); "
                    "give e.g. 10.244.0.0/16,127.0.0.1, or '*' alone"
                ) from None
        return ",".join(entries)

    @model_validator(mode="after")
    def _derived_defaults(self) -> GatewaySettings:
        if self.env == "production":
            self._refuse_development_settings()
        if self.internal_port and self.internal_port == self.http_port:
            raise ValueError(
                f"internal_port ({self.internal_port}) must differ from the public port (DRTECH_HTTP_PORT): "
                "the operational endpoints are never served on the public one"
            )
        if self.blob_store == "s3" and not self.s3_bucket:
            raise ValueError("DRTECH_GATEWAY_BLOB_STORE=s3 needs DRTECH_GATEWAY_S3_BUCKET")
        if self.s3_prefix and not self.s3_prefix.endswith("/"):
            raise ValueError(f"DRTECH_GATEWAY_S3_PREFIX must end with '/' (or be empty): {self.s3_prefix!r}")
        if self.max_upload_bytes > self.max_message_bytes - _MESSAGE_ROOM:
            # Larger uploads would be accepted, stored, and then never reach a model service.
            raise ValueError(
                f"max_upload_bytes ({self.max_upload_bytes}) must leave {_MESSAGE_ROOM} bytes of the gRPC "
                f"message limit (DRTECH_MAX_MESSAGE_BYTES={self.max_message_bytes}) for the rest of the "
                "message: raise DRTECH_MAX_MESSAGE_BYTES too, for the gateway and the model services"
            )
        if self.upload_queue_bytes < self.max_request_bytes:
            raise ValueError(
                f"upload_queue_bytes ({self.upload_queue_bytes}) must hold at least one upload of the largest "
                f"accepted size ({self.max_request_bytes} bytes with its form), or such uploads always get 503"
            )
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.home / 'gateway.db').as_posix()}"
        if self.cookie_secure is None:
            self.cookie_secure = self.env == "production"
        return self

    def _refuse_development_settings(self) -> None:
        """DRTECH_ENV=production: no SQLite, no over-broad trusted proxies, no cookie over plain HTTP,
        no uploads on the pod's own disk."""
        problems = [
            database_problem(self.database_url, "DRTECH_GATEWAY_DATABASE_URL"),
            trusted_proxies_problem(
                self.forwarded_allow_ips.split(","), "DRTECH_GATEWAY_FORWARDED_ALLOW_IPS"
            ),
        ]
        if self.blob_store == "local":
            problems.append("DRTECH_GATEWAY_BLOB_STORE is local (files in the pod: replicas would not "
                            "share them); use s3 with DRTECH_GATEWAY_S3_BUCKET")
        if self.cookie_secure is False:
            problems.append("DRTECH_GATEWAY_COOKIE_SECURE is off: the session cookie would travel over "
                            "plain HTTP; leave it unset (on in production)")
        found = [problem for problem in problems if problem]
        if found:
            raise ValueError("DRTECH_ENV=production refuses development settings: " + "; ".join(found))

    @property
    def max_request_bytes(self) -> int:
        """The largest request body accepted: the largest upload with its multipart framing."""
        return self.max_upload_bytes + FORM_OVERHEAD_BYTES

    def image_limits(self) -> ImageLimits:
        """What an upload is checked against here: the model services' limits, with the upload limit."""
        return self.pixel_limits(self.max_upload_bytes)

    @property
    def internal_bind_host(self) -> str:
        return self.internal_host or self.host

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def heatmaps_dir(self) -> Path:
        return self.home / "heatmaps"



def model_addr_variable(name: str) -> str:
    """The variable that gives model service `name` its address alone: DRTECH_BONE_ADDR for bone."""
    return f"DRTECH_{name.upper()}_ADDR"


def default_model_addrs() -> dict[str, str]:
    """name -> 127.0.0.1:<default port> for every model service of the registry (make run's)."""
    return {task: f"127.0.0.1:{spec.default_port}" for task, spec in model_specs().items()}
