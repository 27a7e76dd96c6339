"""Musculoskeletal radiograph: normal vs abnormal, with a Kellgren-Lawrence severity grade.

The shipped model is trained on knee radiographs (Osteoarthritis Initiative, KL-graded):
normal = KL0, abnormal = KL>=2. It also grades KL 0-4, reported as extra.kl_grade.
"""

from pathlib import Path

from services.core.spec import Label, TaskSpec

SPEC = TaskSpec(
    task="bone",
    exam_type="bone_xray",
    exam_display_name="Bone X-ray (knee)",
    exam_summary="normal or abnormal, with a severity grade",
    labels=(Label("NORMAL", "Normal"), Label("ABNORMAL", "Abnormal")),
    model_dir=Path(__file__).parent / "model",
    default_port=50052,
    extra_outputs=("kl_probabilities",),
    reads="knee radiographs (X-rays of the knee joint)",
    gated=True,
)
