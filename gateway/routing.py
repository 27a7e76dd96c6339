"""Which model service an upload goes to.

An explicit exam type wins. For `auto`, a DICOM upload is routed from its header (Modality and, for
radiographs, BodyPartExamined); anything else (a CT, MR or ultrasound whatever the body part, a JPEG
or PNG, or a DICOM whose header does not say) goes to the router model service
(gateway/auto_routing.py), which also refuses images that are none of the three.
"""

from __future__ import annotations

from collections.abc import Mapping

EXAM_TYPES: tuple[str, ...] = ("chest_xray", "skin_lesion", "bone_xray")
AUTO = "auto"


# DICOM BodyPartExamined values (PS3.16 CID 4031 codes and common free-text variants).
_CHEST_PARTS = {"CHEST", "THORAX", "LUNG", "LUNGS", "RIBS"}
_BONE_PARTS = {
    "KNEE",
    "LEG",
    "LOWER LEG",
    "LOWERLEG",
    "UPPER LEG",
    "FEMUR",
    "TIBIA",
    "FIBULA",
    "ANKLE",
    "FOOT",
    "HIP",
    "PELVIS",
    "SHOULDER",
    "HUMERUS",
    "ARM",
    "UPPER ARM",
    "ELBOW",
    "FOREARM",
    "WRIST",
    "HAND",
    "FINGER",
    "EXTREMITY",
    "LOWER EXTREMITY",
    "UPPER EXTREMITY",
    "BONE",
    "SKELETON",
    "CLAVICLE",
    "SCAPULA",
}
_SKIN_PARTS = {"SKIN"}
# XC: external-camera photography, the modality DICOM dermoscopy uses (PS3.3 supplement 221).
_SKIN_MODALITIES = {"XC", "DMS"}


# Projection radiography (DR: retired, still written by older systems), and the modalities that do
# not name the acquisition (other, secondary capture): only these let the body part route an upload.
_BODY_PART_MODALITIES = {"CR", "DX", "RG", "DR", "", "OT", "SC"}


def route_dicom(tags: Mapping[str, str]) -> str | None:
    """The exam type a DICOM header points to, or None when it does not say."""
    modality = tags.get("Modality", "").strip().upper()
    part = " ".join(tags.get("BodyPartExamined", "").replace("_", " ").split()).upper()
    if modality in _SKIN_MODALITIES:
        return "skin_lesion"
    if modality not in _BODY_PART_MODALITIES:
        return None  # a chest CT or a knee MR is not a radiograph: the router model decides (and refuses)
    if part in _SKIN_PARTS:
        return "skin_lesion"
    if part in _CHEST_PARTS:
        return "chest_xray"
    if part in _BONE_PARTS:
        return "bone_xray"
    return None  # no or another body part (head, abdomen, ...): do not guess


def choose_exam_type(requested: str, media_type: str, dicom_tags: Mapping[str, str]) -> str | None:
    """The exam type to diagnose as, or None when `auto` cannot decide."""
    if requested != AUTO:
        return requested
    if media_type == "application/dicom":
        return route_dicom(dicom_tags)
    return None
