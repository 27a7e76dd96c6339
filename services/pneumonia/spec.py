"""Pediatric chest X-ray: normal vs pneumonia (Kermany et al. 2018)."""

from pathlib import Path

from services.core.spec import Label, TaskSpec

SPEC = TaskSpec(
    task="pneumonia",
    exam_type="chest_xray",
    exam_display_name="Chest X-ray",
    exam_summary="pneumonia or normal",
    labels=(Label("NORMAL", "Normal"), Label("PNEUMONIA", "Pneumonia")),
    model_dir=Path(__file__).parent / "model",
    default_port=50054,
    reads="chest X-rays (frontal chest radiographs)",
    gated=True,
)
