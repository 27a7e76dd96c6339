"""Which model service an upload goes to.

An explicit exam type wins. For `auto`, a DICOM upload is routed from its header (dermoscopy; and
for radiographs, BodyPartExamined: chest or knee, and a refusal for other bones); anything else (a
CT, MR or ultrasound whatever the body part, a photo, a JPEG or PNG, or a DICOM whose header does not
say) goes to the router model service (gateway/auto_routing.py), which also refuses images that are
none of the three.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.registry import AUTO


# DICOM BodyPartExamined values (PS3.16 CID 4031 codes and common free-text variants).
_CHEST_PARTS = {"CHEST", "THORAX", "LUNG", "LUNGS", "RIBS"}
# The bone model reads knee radiographs (its card: trained on knee osteoarthritis grades, not on
# MURA's upper-limb studies), so only a knee is routed to it from the header.
_KNEE_PARTS = {"KNEE", "KNEE JOINT"}
# Other bones and joints: radiographs the bone model was never trained on. `auto` refuses them with
# the reason rather than grade a hand as a knee; an explicit bone_xray still runs the model.
_OTHER_BONE_PARTS = {
    "LEG", "LOWER LEG", "LOWERLEG", "UPPER LEG", "FEMUR", "TIBIA", "FIBULA", "ANKLE", "FOOT", "TOE", "HIP",
    "PELVIS", "SHOULDER", "HUMERUS", "ARM", "UPPER ARM", "ELBOW", "FOREARM", "WRIST", "HAND", "FINGER",
    "THUMB", "EXTREMITY", "LOWER EXTREMITY", "UPPER EXTREMITY", "BONE", "SKELETON", "CLAVICLE", "SCAPULA",
    "SPINE", "CSPINE", "TSPINE", "LSPINE", "SKULL",
}
# DMS: dermoscopy (PS3.3, supplement 221). XC (any external-camera photo: an eye, a face, a wound)
# is a skin lesion only where the header also says SKIN.
_DERMOSCOPY = "DMS"
_PHOTOGRAPHY = "XC"
# Projection radiography (DR: retired, still written by older systems): only these let the body
# part route an upload. Secondary capture, "other" or no modality say nothing about how the image
# was made (a photo of a chest is not a chest X-ray): the router model looks at those.
_RADIOGRAPHY = {"CR", "DX", "RG", "DR"}


class NotServed(ValueError):
    """The DICOM header names an exam that no Dr.Tech model was trained on."""


def route_dicom(tags: Mapping[str, str]) -> str | None:
    """The exam type a DICOM header points to, or None when it does not say. Raises NotServed for a
    radiograph of a body part no model reads."""
    modality = tags.get("Modality", "").strip().upper()
    part = " ".join(tags.get("BodyPartExamined", "").replace("_", " ").split()).upper()
    if modality == _DERMOSCOPY or (modality == _PHOTOGRAPHY and part == "SKIN"):
        return "skin_lesion"
    if modality not in _RADIOGRAPHY:
        return None  # a chest CT, a knee MR, a photo: the router model decides (and refuses)
    if part in _CHEST_PARTS:
        return "chest_xray"
    if part in _KNEE_PARTS:
        return "bone_xray"
    if part in _OTHER_BONE_PARTS:
        raise NotServed(
            f"The DICOM header says this is a radiograph of the {part.lower()}; Dr.Tech's bone model reads "
            "knee radiographs only, so it will not guess. Choose bone_xray yourself to run it anyway."
        )
    return None  # no or another body part (head, abdomen, ...): do not guess


def choose_exam_type(requested: str, media_type: str, dicom_tags: Mapping[str, str]) -> str | None:
    """The exam type to diagnose as, or None when `auto` cannot decide."""
    if requested != AUTO:
        return requested
    if media_type == "application/dicom":
        return route_dicom(dicom_tags)
    return None
