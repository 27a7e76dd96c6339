"""`python -m services.router`: the router model service (gRPC drtech.v1.DiagnosisService)."""

from services.core.server import serve
from services.router.spec import SPEC

serve(SPEC)
