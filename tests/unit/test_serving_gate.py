"""A gated model service refuses what its gate says it cannot read, before any answer is made, and
says what it reads; the gate's ratio is not part of the diagnosis."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from protos.drtech.v1 import diagnosis_pb2
from services.core.errors import WrongKindOfImage
from services.core.service import DiagnosisServicer, load_model
from services.core.settings import ServingSettings
from services.pneumonia.spec import SPEC as PNEUMONIA
from tests.unit.test_training_gate import _model
from training import gate


def _servicer(tmp_path: Path, bias: float | None, refuse: bool = True) -> DiagnosisServicer:
    """The pneumonia spec on a tiny model whose gate ratio is exp(mean brightness * 3 + bias)
    (no gate output at all when `bias` is None)."""
    model = _model(features=3, classes=2)
    if bias is not None:
        model = gate.add_logistic_gate(model, np.ones(3), bias, {"method": "logistic"})
    tmp_path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, tmp_path / "model.onnx")
    (tmp_path / "card.json").write_text(json.dumps({"name": "tiny", "version": "1", "labels": PNEUMONIA.label_codes}))
    spec = replace(PNEUMONIA, model_dir=tmp_path)
    settings = ServingSettings(intra_op_threads=1, warmup_runs=1, refuse_unreadable=refuse)
    servicer = DiagnosisServicer(spec, settings)
    servicer.set_model(load_model(spec, settings))
    return servicer


def _request(grey: int) -> diagnosis_pb2.DiagnoseRequest:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (grey, grey, grey)).save(buffer, format="PNG")
    return diagnosis_pb2.DiagnoseRequest(image=buffer.getvalue())


def test_an_image_above_the_gate_is_refused_naming_what_the_model_reads(tmp_path: Path) -> None:
    servicer = _servicer(tmp_path, bias=-1.0)     # ratio = exp(pooled sum - 1)
    try:
        with pytest.raises(WrongKindOfImage, match="chest X-rays"):
            servicer.Diagnose(_request(255), None)     # bright: features sum well above 1
        reply = servicer.Diagnose(_request(0), None)   # black: features sum negative
        assert reply.label in PNEUMONIA.label_codes
        assert "ood_ratio" not in reply.extra.fields
    finally:
        servicer.close()


def test_refusing_can_be_turned_off_and_an_ungated_model_serves_everything(tmp_path: Path) -> None:
    off = _servicer(tmp_path / "off", bias=100.0, refuse=False)
    ungated = _servicer(tmp_path / "none", bias=None)
    try:
        assert off.Diagnose(_request(255), None).label in PNEUMONIA.label_codes
        assert ungated.Diagnose(_request(255), None).label in PNEUMONIA.label_codes
    finally:
        off.close()
        ungated.close()
