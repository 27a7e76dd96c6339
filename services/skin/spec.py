"""Dermatoscopic skin lesion: the seven HAM10000 diagnostic classes (Tschandl et al. 2018)."""

from pathlib import Path

from services.core.spec import Label, TaskSpec

SPEC = TaskSpec(
    task="skin",
    exam_type="skin_lesion",
    exam_display_name="Skin lesion (dermoscopy)",
    exam_summary="seven kinds of lesion",
    labels=(
        Label("akiec", "Actinic keratosis / intraepithelial carcinoma"),
        Label("bcc", "Basal cell carcinoma"),
        Label("bkl", "Benign keratosis-like lesion"),
        Label("df", "Dermatofibroma"),
        Label("mel", "Melanoma"),
        Label("nv", "Melanocytic nevus"),
        Label("vasc", "Vascular lesion"),
    ),
    model_dir=Path(__file__).parent / "model",
    default_port=50053,
    reads="dermoscopy photos of a skin lesion",
    gated=True,
)
