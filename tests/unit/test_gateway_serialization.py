"""Records and gRPC replies -> the JSON shapes of API.md (gateway/serialization.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from google.protobuf import struct_pb2

from gateway import records
from gateway.database import create_database_engine, session_factory
from gateway.records import Diagnosis
from gateway.serialization import clean_extra, diagnosis_json, iso_utc, model_card_json, struct_to_dict
from protos.drtech.v1 import diagnosis_pb2

API_FIELDS = {
    "id",
    "exam_type",
    "status",
    "label",
    "label_display",
    "confidence",
    "probabilities",
    "model",
    "created_at",
    "extra",
}


def completed_record(**overrides) -> Diagnosis:
    values = {
        "id": "6f1c3d7e-0000-4000-8000-000000000001",
        "user_id": "u1",
        "exam_type": "chest_xray",
        "requested_exam_type": "chest_xray",
        "status": "completed",
        "detail": None,
        "label": "PNEUMONIA",
        "label_display": "Pneumonia",
        "confidence": 0.973,
        "probabilities": {"NORMAL": 0.027, "PNEUMONIA": 0.973},
        "model_name": "pneumonia",
        "model_version": "2026.11.1",
        "extra": {},
        "explain": False,
        "heatmap_sha256": None,
        "image_sha256": "a" * 64,
        "media_type": "image/jpeg",
        "created_at": datetime(2026, 11, 25, 19, 0, 0, tzinfo=UTC),
    }
    values.update(overrides)
    return Diagnosis(**values)


def test_a_completed_diagnosis_has_exactly_the_api_md_fields_and_values() -> None:
    body = diagnosis_json(completed_record())
    assert API_FIELDS <= set(body)
    assert {k: body[k] for k in API_FIELDS} == {
        "id": "6f1c3d7e-0000-4000-8000-000000000001",
        "exam_type": "chest_xray",
        "status": "completed",
        "label": "PNEUMONIA",
        "label_display": "Pneumonia",
        "confidence": 0.973,
        "probabilities": {"NORMAL": 0.027, "PNEUMONIA": 0.973},
        "model": {"name": "pneumonia", "version": "2026.11.1"},
        "created_at": "2026-11-25T19:00:00Z",
        "extra": {},
    }
    assert body["image_url"] == "/api/v1/diagnoses/6f1c3d7e-0000-4000-8000-000000000001/image"
    assert body["heatmap_url"] is None
    json.dumps(body)  # serialisable as is


def test_an_explained_diagnosis_links_its_heatmap() -> None:
    body = diagnosis_json(completed_record(heatmap_sha256="b" * 64))
    assert body["heatmap_url"].endswith("/heatmap")


def test_a_failed_diagnosis_says_why_and_has_no_result() -> None:
    record = completed_record(
        status="failed",
        detail="The pneumonia model service is unavailable",
        label=None,
        label_display=None,
        confidence=None,
        probabilities={},
        model_name=None,
        model_version=None,
    )
    body = diagnosis_json(record)
    assert body["status"] == "failed" and body["detail"].startswith("The pneumonia")
    assert body["label"] is None and body["probabilities"] == {}


def test_times_are_iso_8601_utc_with_z_even_from_naive_or_other_zones() -> None:
    assert iso_utc(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"
    plus_two = timezone(timedelta(hours=2))
    assert iso_utc(datetime(2026, 1, 2, 5, 4, 5, 123000, tzinfo=plus_two)) == "2026-01-02T03:04:05.123000Z"


def test_whole_number_grades_from_a_protobuf_struct_come_back_as_ints() -> None:
    extra = struct_pb2.Struct()
    extra.update({"kl_grade": 3, "kl_probabilities": [0.1, 0.2, 0.4, 0.2, 0.1]})
    cleaned = clean_extra(struct_to_dict(extra))
    assert cleaned["kl_grade"] == 3 and isinstance(cleaned["kl_grade"], int)
    assert cleaned["kl_probabilities"] == [0.1, 0.2, 0.4, 0.2, 0.1]


def test_a_struct_converts_every_kind_of_value_and_a_non_finite_number_becomes_none() -> None:
    """json_format refuses NaN with ValueError: a broken model's output must not become a 500."""
    extra = struct_pb2.Struct()
    extra.update({"ood_ratio": [float("nan"), float("inf"), 0.5], "name": "x", "ok": True, "none": None,
                  "nested": {"score": float("-inf"), "n": 2}})
    assert struct_to_dict(extra) == {"ood_ratio": [None, None, 0.5], "name": "x", "ok": True, "none": None,
                                     "nested": {"score": None, "n": 2.0}}


def test_a_router_reply_without_a_finite_score_is_refused_not_a_500() -> None:
    import anyio

    from gateway.auto_routing import NOT_A_KNOWN_KIND, classify_exam_type
    from gateway.errors import ApiError

    class RouterWithNaN:
        async def Diagnose(self, request: diagnosis_pb2.DiagnoseRequest, timeout: float) -> diagnosis_pb2.DiagnoseResponse:
            reply = diagnosis_pb2.DiagnoseResponse(label="chest_xray", confidence=0.9)
            reply.extra.update({"ood_ratio": [float("nan")]})
            return reply

    from gateway.model_catalog import ModelCatalog
    from services.registry import model_specs

    backends = SimpleNamespace(models={"pneumonia": None, "router": RouterWithNaN()})
    ctx = SimpleNamespace(backends=backends, models=ModelCatalog(backends, model_specs(), timeout_s=1.0),
                          settings=SimpleNamespace(route_timeout_s=1.0))
    with pytest.raises(ApiError) as refused:
        anyio.run(classify_exam_type, ctx, b"x", "image/png", "req-1")
    assert refused.value.status_code == 422 and refused.value.detail == NOT_A_KNOWN_KIND


def test_a_model_card_keeps_the_card_json_and_takes_identity_from_get_model_info() -> None:
    info = diagnosis_pb2.ModelInfo(
        model=diagnosis_pb2.ModelRef(name="skin", version="2026.11.1"),
        task="skin",
        exam_type="skin_lesion",
        exam_display_name="Skin lesion (dermoscopy)",
        exam_summary="seven kinds of lesion",
        labels=[diagnosis_pb2.LabelInfo(code="mel", display_name="Melanoma")],
        intended_use="Research.",
        limitations=["Dermoscopy only."],
        card_json=json.dumps({"name": "old", "architecture": "MobileNetV2", "data": "HAM10000"}),
    )
    info.metrics.update({"auc": 0.9})
    card = model_card_json(info)
    assert card["name"] == "skin" and card["version"] == "2026.11.1"
    assert card["architecture"] == "MobileNetV2" and card["data"] == "HAM10000"
    assert card["labels"] == [{"code": "mel", "display_name": "Melanoma"}]
    assert (card["exam_display_name"], card["exam_summary"]) == ("Skin lesion (dermoscopy)", "seven kinds of lesion")
    assert card["metrics"] == {"auc": 0.9}
    assert card["limitations"] == ["Dermoscopy only."]


def test_a_record_just_added_answers_what_reading_it_back_answers(tmp_path: Path) -> None:
    """POST /diagnoses answers from the record it added, without reading it back."""
    engine = create_database_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    records.Base.metadata.create_all(engine)
    sessions = session_factory(engine)
    try:
        record = completed_record(extra={"kl_grade": 2, "findings": [{"label": "x", "score": 0.5}]},
                                  created_at=datetime.now(UTC))
        with sessions() as session:
            records.add_all(session, [record])
            added = diagnosis_json(record)
        with sessions() as session:
            assert added == diagnosis_json(session.get(Diagnosis, record.id))
    finally:
        engine.dispose()
