"""Dr.Tech gateway: the only public surface (HTTP JSON API under /api/v1 and the web UI).

Not for clinical use. Implements ../shared/API.md; what it adds to that contract:

- Invalid fields (request schema errors and the auth service's sign-up rules alike) are 422
  ``{"detail": "Invalid fields: email: ...; password: ...", "errors": {"email": "...", "password": "..."}}``.
  Other errors are ``{"detail": "..."}``.
- Diagnosis JSON also carries ``detail`` (why a diagnosis failed, else null), ``requested_exam_type``
  (what the client asked for, e.g. ``auto``), ``media_type`` (sniffed), ``image_url`` and
  ``heatmap_url`` (null when not explained). A failed diagnosis has null label/label_display/
  confidence/model name and version, and empty probabilities.
- ``POST /api/v1/diagnoses/{id}/retry`` runs a failed diagnosis again on its kept upload (200, or 409
  when it already completed).
- The list reply also echoes ``limit`` (1-100, default 20) and ``offset``.
- Log-in also returns ``user``; ``/api/v1/me`` returns every profile field and ``created_at``.
- Cookie-authenticated requests that change data must send ``X-Requested-With`` (CSRF guard).

Run with ``python -m gateway [--port N]``; build one in-process with ``gateway.app.create_app``
or start one on a free port with ``gateway.testing.start_gateway``.
"""
