"""`python -m services.bone`: the bone model service (gRPC drtech.v1.DiagnosisService)."""

from services.bone.spec import SPEC
from services.core.server import serve

serve(SPEC)
