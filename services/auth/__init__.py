"""Dr.Tech auth service: users and sessions over gRPC (``drtech.v1.AuthService``).

Run ``python -m services.auth``; start in-process with ``services.auth.server.start_server``. Sign-up rules
live in ``services.auth.validation`` (importable without gRPC or SQLAlchemy).
"""
