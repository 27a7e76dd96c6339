"""`exam_type=auto` for uploads whose DICOM header does not say: ask the router model service.

The router (services/router, trained by training/router.py) classifies an image as one of the kinds
it was trained on (its labels are exam types), and reports `ood_ratio`: how far the image's features are from every kind
it knows, relative to a threshold set on genuine validation images. Above 1 the image is none of
those kinds (a photo, a CT slice, noise) and the upload is refused with 422, not diagnosed.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import grpc

from gateway.backend_errors import image_refusal_status, is_unreachable, refusal_reason
from gateway.context import GatewayContext
from gateway.errors import ApiError
from gateway.routing import AUTO
from gateway.serialization import struct_to_dict
from protos.drtech.v1 import diagnosis_pb2

log = logging.getLogger("gateway.auto_routing")

NOT_A_KNOWN_KIND = (
    "This image does not look like a chest X-ray, a dermoscopy photo of a skin lesion or a knee "
    "radiograph, so Dr.Tech will not diagnose it. Upload one of those, or choose the exam type yourself."
)


def router_unavailable(exam_types: Collection[str]) -> str:
    choices = ", ".join(exam_type for exam_type in exam_types if exam_type != AUTO)
    return f"Automatic routing is unavailable right now; choose the exam type ({choices})."


def decide(label: str, ood_ratio: float, exam_types: Collection[str]) -> str | None:
    """The exam type to use, or None when the router says the image is none of the kinds it knows,
    or of a kind no model service in `exam_types` serves."""
    if label == AUTO or label not in exam_types or not ood_ratio <= 1.0:   # `not <=` also refuses NaN
        return None
    return label


async def classify_exam_type(ctx: GatewayContext, data: bytes, media_type: str, request_id: str) -> str:
    """Ask the router which exam type `data` is; 422 if none of the three, 503 if it cannot answer."""
    router = await ctx.models.resolve(AUTO)
    if router is None:
        raise ApiError(503, router_unavailable(ctx.models.exam_types()), headers={"Retry-After": "5"})
    request = diagnosis_pb2.DiagnoseRequest(image=data, media_type=media_type, request_id=request_id)
    try:
        reply = await ctx.backends.models[router].Diagnose(request, timeout=ctx.settings.route_timeout_s)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            status = image_refusal_status(refusal_reason(error))
            raise ApiError(status, f"The image cannot be used: {error.details()}", errors={"file": error.details()}) from None
        reason = "unreachable" if is_unreachable(error) else "failed"
        log.warning("routing %s: router %s: %s", request_id, reason, error.code().name)
        raise ApiError(503, router_unavailable(ctx.models.exam_types()),
                       headers={"Retry-After": "5"}) from None
    extra = struct_to_dict(reply.extra) if reply.HasField("extra") else {}
    ratios = extra.get("ood_ratio") or [None]
    ood_ratio = float("nan") if ratios[0] is None else float(ratios[0])   # no usable score: refused below
    chosen = decide(reply.label, ood_ratio, ctx.models.exam_types())
    log.info("routing %s: %s (p=%.3f, ood_ratio=%.2f) -> %s", request_id, reply.label, reply.confidence,
             ood_ratio, chosen or "rejected")
    if chosen is None:
        raise ApiError(422, NOT_A_KNOWN_KIND, errors={"file": NOT_A_KNOWN_KIND})
    return chosen
