"""Domain errors of the serving core.

Handlers raise these; one gRPC interceptor (services/core/interceptors.py) maps them to status
codes. They carry no gRPC types, so the gateway and training can import and raise them too.
"""

from __future__ import annotations

# The trailing metadata key of a refused call that names its reason (each error's `reason` below),
# so a caller tells refusals apart without reading their messages (the gateway: 415 or 422).
ERROR_REASON_KEY = "drtech-error-reason"


class InvalidImage(ValueError):
    """The upload cannot be used as an image: empty, corrupt, truncated, too large or too small."""

    reason = "invalid_image"


class UnsupportedMediaType(InvalidImage):
    """The upload is (or claims to be) a type this service does not accept.

    A subclass of InvalidImage so callers that only care about "bad input" need one except clause;
    the gateway tells the two apart, by `reason`, to answer 415 instead of 422.
    """

    reason = "unsupported_media_type"


class WrongKindOfImage(InvalidImage):
    """A readable image that is not the kind the model reads (a document sent as a chest X-ray, a
    knee sent as a skin lesion): the model's gate (training/gate.py) refused it. The message names
    what the model reads; the gateway answers 422 and keeps no record."""

    reason = "wrong_image_kind"


class ModelNotReady(RuntimeError):
    """The model is not loaded and warmed yet (or the service is shutting down)."""


class ServiceBusy(RuntimeError):
    """The service cannot take this call before its deadline (e.g. large images are being decoded)."""


class CallCancelled(RuntimeError):
    """The caller cancelled the call (or its connection went) while it waited: it gives back its
    place in line, and nothing is decoded or run for nobody."""
