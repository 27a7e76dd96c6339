"""The router: which kind of image an upload is (for exam_type=auto), or none of the three.

Trained by `python -m training.router`. Besides the usual outputs, the model has `ood_ratio`
(distance of the image's features to the nearest kind / the threshold set on validation images):
above 1 the image is none of the three kinds and the gateway refuses it.
"""

from pathlib import Path

from services.core.spec import Label, TaskSpec

SPEC = TaskSpec(
    task="router",
    exam_type="auto",
    exam_display_name="Let Dr.Tech decide",
    exam_summary="from the DICOM header, or recognised by the router model",
    labels=(
        Label("chest_xray", "Chest X-ray"),
        Label("skin_lesion", "Skin lesion (dermoscopy)"),
        Label("bone_xray", "Bone X-ray (knee)"),
    ),
    model_dir=Path(__file__).parent / "model",
    default_port=50055,
    extra_outputs=("ood_ratio",),
)
