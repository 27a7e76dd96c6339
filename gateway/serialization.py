"""Records and gRPC replies -> the JSON shapes of API.md."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2

from gateway.records import Diagnosis
from protos.drtech.v1 import auth_pb2, diagnosis_pb2

API = "/api/v1"


def iso_utc(moment: datetime) -> str:
    """ISO-8601 in UTC with a `Z`, e.g. 2026-11-25T19:00:00.123456Z (naive values are UTC, as stored)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def diagnosis_json(record: Diagnosis) -> dict[str, Any]:
    return {
        "id": record.id,
        "exam_type": record.exam_type,
        "status": record.status,
        "label": record.label,
        "label_display": record.label_display,
        "confidence": record.confidence,
        "probabilities": dict(record.probabilities or {}),
        "model": {"name": record.model_name, "version": record.model_version},
        "created_at": iso_utc(record.created_at),
        "extra": dict(record.extra or {}),
        # Additions to the API.md shape:
        "detail": record.detail,
        "requested_exam_type": record.requested_exam_type,
        "media_type": record.media_type,
        "image_url": f"{API}/diagnoses/{record.id}/image",
        "heatmap_url": f"{API}/diagnoses/{record.id}/heatmap" if record.heatmap_sha256 else None,
    }


def struct_to_dict(message: struct_pb2.Struct | None) -> dict[str, Any]:
    """A protobuf Struct as plain Python. A number that is not finite (a broken model's NaN, which
    JSON cannot carry and json_format refuses with ValueError) becomes None."""
    if message is None:
        return {}
    return {key: _plain(value) for key, value in message.fields.items()}


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value if math.isfinite(value.number_value) else None
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    if kind in ("string_value", "bool_value"):
        return getattr(value, kind)
    return None


def clean_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """protobuf Struct numbers are doubles; give whole numbers back as ints (kl_grade: 2, not 2.0)."""
    cleaned: dict[str, Any] = {}
    for key, value in extra.items():
        if isinstance(value, float) and value.is_integer() and key.endswith(("_grade", "_count", "grade")):
            cleaned[key] = int(value)
        elif isinstance(value, dict):
            cleaned[key] = clean_extra(value)
        else:
            cleaned[key] = value
    return cleaned


def user_json(user: auth_pb2.User) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": user.id,
        "email": user.email,
        "first_name": user.first_name,
        "surname": user.surname,
        "address1": user.address1,
        "address2": user.address2,
        "city": user.city,
        "state": user.state,
        "zip": user.zip,
        "gender": user.gender,
        "birth_date": user.birth_date or None,
    }
    if user.HasField("created_at"):
        body["created_at"] = iso_utc(user.created_at.ToDatetime(tzinfo=UTC))
    return body


def model_card_json(info: diagnosis_pb2.ModelInfo) -> dict[str, Any]:
    """A model card: the service's whole card.json, with the authoritative fields from GetModelInfo on top."""
    card: dict[str, Any] = {}
    if info.card_json:
        try:
            loaded = json.loads(info.card_json)
            if isinstance(loaded, dict):
                card.update(loaded)
        except ValueError:
            pass
    card.update(
        {
            "name": info.model.name,
            "version": info.model.version,
            "task": info.task,
            "exam_type": info.exam_type,
            "exam_display_name": info.exam_display_name,
            "exam_summary": info.exam_summary,
            "labels": [{"code": label.code, "display_name": label.display_name} for label in info.labels],
            "input": {
                "width": info.input.width,
                "height": info.input.height,
                "color_mode": info.input.color_mode,
                "media_types": list(info.input.media_types),
                "max_bytes": info.input.max_bytes,
                "min_side": info.input.min_side,
            },
            "metrics": struct_to_dict(info.metrics) if info.HasField("metrics") else card.get("metrics", {}),
            "intended_use": info.intended_use or card.get("intended_use", ""),
            "limitations": list(info.limitations) or card.get("limitations", []),
        }
    )
    return card
