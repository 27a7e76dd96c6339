"""`python -m services.pneumonia`: the pneumonia model service (gRPC drtech.v1.DiagnosisService)."""

from services.pneumonia.spec import SPEC
from services.core.server import serve

serve(SPEC)
