"""What `DRTECH_ENV=production` refuses, shared by the settings of the auth service and the gateway.

A development default that is harmless on a laptop is a hazard in a cluster: a SQLite file per pod
(records that differ between replicas and vanish with the pod), a trusted-proxy range that lets any
pod choose its own client IP, a session cookie sent over plain HTTP. Each check returns the one-line
reason to refuse, or None.
"""

from __future__ import annotations

import ipaddress

from pydantic import ValidationError
from sqlalchemy.exc import ArgumentError

from services.common.database_url import engine_url

# The widest network a production trusted-proxy entry may be: 256 addresses (an IPv4 /24, an IPv6
# /120), e.g. one node's pod range holding the ingress controller, or a controller's node pool.
# A pod network (10.244.0.0/16, 10.42.0.0/16), 10.0.0.0/8 or 0.0.0.0/0 holds every pod of the
# cluster: any of them could then set X-Forwarded-For and choose its client IP (dodging the log-in
# throttle that counts failures per address).
MAX_TRUSTED_PROXY_ADDRESSES = 256


def database_problem(url: str, variable: str) -> str | None:
    """Why `url` cannot hold production records, or None. `variable` is the setting that moves it."""
    if not url:
        return f"{variable} is empty (a SQLite file in the pod); give a PostgreSQL URL"
    try:
        backend = engine_url(url).get_backend_name()
    except ArgumentError:
        return f"{variable} is not a database URL; give e.g. postgresql+psycopg://user@host/db"
    if backend == "sqlite":
        return (f"{variable} is SQLite (one file per pod: replicas would not share it); "
                "give a PostgreSQL URL")
    return None


def trusted_proxies_problem(entries: list[str], variable: str) -> str | None:
    """Why this trusted-proxy list is too broad for production, or None. Entries are IP addresses
    or CIDR networks (already validated), or "*" alone."""
    if entries == ["*"]:
        return (f"{variable} is '*': anyone could then choose their client IP; "
                "name the ingress controller's addresses")
    for entry in entries:
        network = ipaddress.ip_network(entry)
        if network.num_addresses > MAX_TRUSTED_PROXY_ADDRESSES:
            widest = 32 - 8 if network.version == 4 else 128 - 8
            return (f"{variable} entry {entry} is {network.num_addresses} addresses, more than "
                    f"{MAX_TRUSTED_PROXY_ADDRESSES} (/{widest}): a pod network or wider lets any pod "
                    "there choose its client IP; name the ingress controller's own addresses")
    return None


def settings_error_line(error: ValidationError) -> str:
    """A settings ValidationError as one line ("field: message; ..."), for a refusal to start."""
    parts = []
    for problem in error.errors():
        message = str(problem["msg"]).removeprefix("Value error, ")
        where = ".".join(str(part) for part in problem["loc"])
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
