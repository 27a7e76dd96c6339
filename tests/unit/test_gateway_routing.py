"""Which model service an upload goes to (gateway/routing.py)."""

from __future__ import annotations

import pytest

from gateway.auto_routing import decide
from gateway.grpc_clients import channel_target
from gateway.routing import AUTO, NotServed, choose_exam_type, route_dicom


@pytest.mark.parametrize("exam_type", ["chest_xray", "skin_lesion", "bone_xray"])
def test_an_explicit_exam_type_wins_over_the_dicom_header(exam_type: str) -> None:
    tags = {"Modality": "CR", "BodyPartExamined": "CHEST"}
    assert choose_exam_type(exam_type, "application/dicom", tags) == exam_type


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"Modality": "CR", "BodyPartExamined": "CHEST"}, "chest_xray"),
        ({"Modality": "DX", "BodyPartExamined": "chest"}, "chest_xray"),
        ({"Modality": "DX", "BodyPartExamined": "KNEE"}, "bone_xray"),
        ({"Modality": "CR", "BodyPartExamined": "knee_joint"}, "bone_xray"),
        ({"Modality": "DMS"}, "skin_lesion"),
        ({"Modality": "XC", "BodyPartExamined": "SKIN"}, "skin_lesion"),
    ],
)
def test_auto_routes_dicom_from_modality_and_body_part(tags: dict[str, str], expected: str) -> None:
    assert route_dicom(tags) == expected
    assert choose_exam_type(AUTO, "application/dicom", tags) == expected


@pytest.mark.parametrize(
    "tags",
    [{}, {"Modality": "CT", "BodyPartExamined": "HEAD"}, {"Modality": "DX"}, {"BodyPartExamined": "ABDOMEN"},
     # Not radiographs, whatever the body part: the router model looks at the image instead
     {"Modality": "CT", "BodyPartExamined": "CHEST"}, {"Modality": "MR", "BodyPartExamined": "KNEE"},
     {"Modality": "US", "BodyPartExamined": "SKIN"}, {"Modality": "PT", "BodyPartExamined": "CHEST"},
     # A photo of anything but skin, and captures that do not say how they were made
     {"Modality": "XC"}, {"Modality": "XC", "BodyPartExamined": "EYE"}, {"Modality": "XC", "BodyPartExamined": "FACE"},
     {"BodyPartExamined": "CHEST"}, {"Modality": "SC", "BodyPartExamined": "CHEST"},
     {"Modality": "OT", "BodyPartExamined": "SKIN"}, {"Modality": "SC", "BodyPartExamined": "KNEE"},
     # A radiograph "of the skin" is no dermoscopy photo
     {"Modality": "CR", "BodyPartExamined": "SKIN"}],
)
def test_auto_does_not_guess_when_the_header_does_not_say(tags: dict[str, str]) -> None:
    assert choose_exam_type(AUTO, "application/dicom", tags) is None


@pytest.mark.parametrize("part", ["HAND", "WRIST", "SHOULDER", "PELVIS", "FOOT", "lower_leg", "SPINE"])
def test_auto_refuses_a_radiograph_of_a_bone_the_knee_model_never_saw(part: str) -> None:
    """The bone model grades knee osteoarthritis: a hand film would get a knee's KL grade."""
    with pytest.raises(NotServed, match="knee radiographs only"):
        choose_exam_type(AUTO, "application/dicom", {"Modality": "DX", "BodyPartExamined": part})
    assert choose_exam_type("bone_xray", "application/dicom", {"Modality": "DX", "BodyPartExamined": part}) \
        == "bone_xray"                                        # the user's explicit choice still runs


@pytest.mark.parametrize("media_type", ["image/jpeg", "image/png"])
def test_auto_leaves_a_plain_image_to_the_router_model(media_type: str) -> None:
    assert choose_exam_type(AUTO, media_type, {}) is None


def test_backend_addresses_use_the_dns_resolver_so_round_robin_sees_every_pod() -> None:
    assert channel_target("127.0.0.1:50052") == "dns:///127.0.0.1:50052"
    assert (
        channel_target("bone.drtech.svc.cluster.local:50052") == "dns:///bone.drtech.svc.cluster.local:50052"
    )
    assert channel_target("dns:///bone:50052") == "dns:///bone:50052"
    assert channel_target("unix:/run/bone.sock") == "unix:/run/bone.sock"


@pytest.mark.parametrize(
    ("label", "ood_ratio", "expected"),
    [
        ("chest_xray", 0.3, "chest_xray"),
        ("skin_lesion", 1.0, "skin_lesion"),
        ("bone_xray", 1.01, None),            # past the threshold: none of the three
        ("bone_xray", float("nan"), None),    # no usable score: refuse rather than guess
        ("router_only_label", 0.1, None),
        ("lung_xray", 0.1, None),             # a kind the router knows but no model service serves
        ("auto", 0.1, None),
    ],
)
def test_the_router_answer_is_used_only_for_an_image_of_a_known_kind(
    label: str, ood_ratio: float, expected: str | None
) -> None:
    assert decide(label, ood_ratio, ("bone_xray", "skin_lesion", "chest_xray", "auto")) == expected
