"""`python -m services.skin`: the skin model service (gRPC drtech.v1.DiagnosisService)."""

from services.skin.spec import SPEC
from services.core.server import serve

serve(SPEC)
