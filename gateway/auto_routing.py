"""`exam_type=auto` for uploads whose DICOM header does not say: ask the router model service.

The router (services/router, trained by training/router.py) classifies an image as chest_xray,
skin_lesion or bone_xray, and reports `ood_ratio`: how far the image's features are from every kind
it knows, relative to a threshold set on genuine validation images. Above 1 the image is none of
the three (a photo, a CT slice, noise) and the upload is refused with 422, not diagnosed.
"""

from __future__ import annotations

import logging

import grpc

from gateway.backend_errors import image_refusal_status, is_unreachable, refusal_reason
from gateway.context import GatewayContext
from gateway.errors import ApiError
from gateway.routing import EXAM_TYPES
from gateway.serialization import struct_to_dict
from protos.drtech.v1 import diagnosis_pb2

log = logging.getLogger("gateway.auto_routing")

NOT_A_KNOWN_KIND = (
    "This image does not look like a chest X-ray, a dermoscopy photo of a skin lesion or a knee "
    "radiograph, so Dr.Tech will not diagnose it. Upload one of those, or choose the exam type yourself."
)
ROUTER_UNAVAILABLE = (
    "Automatic routing is unavailable right now; choose the exam type (chest_xray, skin_lesion, bone_xray)."
)


def decide(label: str, ood_ratio: float) -> str | None:
    """The exam type to use, or None when the router says the image is none of the three."""
    if label not in EXAM_TYPES or not ood_ratio <= 1.0:   # `not <=` also refuses NaN
        return None
    return label


async def classify_exam_type(ctx: GatewayContext, data: bytes, media_type: str, request_id: str) -> str:
    """Ask the router which exam type `data` is; 422 if none of the three, 503 if it cannot answer."""
    request = diagnosis_pb2.DiagnoseRequest(image=data, media_type=media_type, request_id=request_id)
    try:
        reply = await ctx.backends.router.Diagnose(request, timeout=ctx.settings.route_timeout_s)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            status = image_refusal_status(refusal_reason(error))
            raise ApiError(status, f"The image cannot be used: {error.details()}", errors={"file": error.details()}) from None
        reason = "unreachable" if is_unreachable(error) else "failed"
        log.warning("routing %s: router %s: %s", request_id, reason, error.code().name)
        raise ApiError(503, ROUTER_UNAVAILABLE, headers={"Retry-After": "5"}) from None
    extra = struct_to_dict(reply.extra) if reply.HasField("extra") else {}
    ratios = extra.get("ood_ratio") or [None]
    ood_ratio = float("nan") if ratios[0] is None else float(ratios[0])   # no usable score: refused below
    chosen = decide(reply.label, ood_ratio)
    log.info("routing %s: %s (p=%.3f, ood_ratio=%.2f) -> %s", request_id, reply.label, reply.confidence,
             ood_ratio, chosen or "rejected")
    if chosen is None:
        raise ApiError(422, NOT_A_KNOWN_KIND, errors={"file": NOT_A_KNOWN_KIND})
    return chosen
