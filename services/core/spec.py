"""What a model service is: a task spec (labels, input) plus a shipped model folder.

This module is imported by training as well as serving, so it must stay free of gRPC and
ONNX Runtime imports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The model output a gate writes (training/gate.py): > 1 means the image is not what the model reads.
GATE_OUTPUT = "ood_ratio"


@dataclass(frozen=True)
class Label:
    code: str
    display_name: str


@dataclass(frozen=True)
class TaskSpec:
    """The thin, task-specific part of a model service."""

    task: str                    # "bone", "skin", "pneumonia"
    exam_type: str               # public API name: "bone_xray", "skin_lesion", "chest_xray"
    labels: tuple[Label, ...]    # in the model's output order
    model_dir: Path              # holds model.onnx, card.json, card.md
    # How the web UI names the exam type and what it finds ("Chest X-ray", "pneumonia or normal"):
    # served by GetModelInfo, so the gateway and the UI keep no list of their own.
    exam_display_name: str = ""
    exam_summary: str = ""
    # The input size is not here: it is the model file's own input shape (ModelRuntime.input_size),
    # so a 150x150 or 224x224 model is served at the size it was trained at.
    color_mode: str = "RGB"      # what the model takes after preprocessing
    default_port: int = 50052
    # Extra ONNX outputs and how they surface in DiagnoseResponse.extra, e.g. KL grade.
    extra_outputs: tuple[str, ...] = field(default_factory=tuple)
    # What the model reads, for the message refusing other images ("a chest X-ray (...)").
    reads: str = ""
    # Refuse images whose gate output (GATE_OUTPUT, written by training/gate.py) is above 1, when
    # the model file has one. The router's gate is read by the gateway instead.
    gated: bool = False

    @property
    def label_codes(self) -> list[str]:
        return [label.code for label in self.labels]

    def display_name(self, code: str) -> str:
        return {label.code: label.display_name for label in self.labels}[code]

    @property
    def model_path(self) -> Path:
        return self.model_dir / "model.onnx"

    @property
    def card_path(self) -> Path:
        return self.model_dir / "card.json"

    def load_card(self) -> dict[str, Any]:
        return json.loads(self.card_path.read_text(encoding="utf-8"))
