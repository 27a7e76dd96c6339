"""Plumbing shared by the gateway, the auth service and the model services (nothing model-specific).

- `grpc_server.py`           the gRPC server scaffold: health, reflection, mTLS ports, graceful stop, signals
- `error_interceptor.py`     the base of each gRPC service's error interceptor
- `logs.py`                  one logging setup for every process
- `tls.py`                   the internal mutual TLS (DRTECH_INTERNAL_MTLS): credentials, certificates
- `healthcheck.py`           `python -m services.common.healthcheck`: a gRPC health probe over that TLS
- `production.py`            what DRTECH_ENV=production refuses
- `database_url.py`          a configured database URL as SQLAlchemy connects to it
- `migration_transaction.py` one transaction (and lock) around a schema migration
- `schema.py`                waiting for a migrated schema; the `python -m <service>.migrate` body
- `stage_cpu.py`             per-stage CPU counters (Prometheus)
"""
