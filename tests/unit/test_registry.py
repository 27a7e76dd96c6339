"""The model registry: every services/<task>/spec.py with a SPEC, and nothing listed by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.registry import SERVICES_DIR, diagnosis_specs, model_specs
from services.supervisor import components


def copy_model_folder(root: Path, source: str, task: str, exam_type: str, port: int) -> None:
    """services/<source>/spec.py copied to root/<task>/ under a new task, exam type and port."""
    text = (SERVICES_DIR / source / "spec.py").read_text(encoding="utf-8")
    spec = model_specs()[source]
    text = (text.replace(f'task="{source}"', f'task="{task}"')
                .replace(f'exam_type="{spec.exam_type}"', f'exam_type="{exam_type}"')
                .replace(f"default_port={spec.default_port}", f"default_port={port}"))
    (root / task).mkdir(parents=True)
    (root / task / "spec.py").write_text(text, encoding="utf-8")


def test_the_shipped_registry_is_the_three_models_and_the_router_in_port_order() -> None:
    specs = model_specs()
    assert list(specs) == ["bone", "skin", "pneumonia", "router"]
    assert [spec.exam_type for spec in specs.values()] == ["bone_xray", "skin_lesion", "chest_xray", "auto"]
    assert list(diagnosis_specs()) == ["bone", "skin", "pneumonia"]
    assert all(spec.exam_display_name and spec.exam_summary for spec in specs.values())


def test_make_run_starts_auth_every_model_service_of_the_registry_and_the_gateway() -> None:
    assert [comp.name for comp in components()] == ["auth", *model_specs(), "gateway"]
    bone = next(comp for comp in components() if comp.name == "bone")
    assert (bone.module, bone.port, bone.port_env) == ("services.bone", 50052, "DRTECH_BONE_PORT")


def test_a_folder_copied_under_a_new_name_is_a_model_service_of_its_tree(tmp_path: Path) -> None:
    for task in ("pneumonia", "router"):
        shutil.copytree(SERVICES_DIR / task, tmp_path / task, ignore=shutil.ignore_patterns("model"))
    copy_model_folder(tmp_path, "pneumonia", "lungs", "lung_xray", 50056)
    specs = model_specs(tmp_path)
    assert list(specs) == ["pneumonia", "router", "lungs"]
    assert specs["lungs"].exam_type == "lung_xray"
    assert specs["lungs"].model_dir == tmp_path / "lungs" / "model"


def test_a_spec_whose_task_is_not_its_folder_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "lungs").mkdir()
    shutil.copy(SERVICES_DIR / "pneumonia" / "spec.py", tmp_path / "lungs" / "spec.py")
    with pytest.raises(ValueError, match="SPEC.task is 'pneumonia'; it must be the folder's name"):
        model_specs(tmp_path)


def test_two_folders_serving_one_exam_type_are_refused(tmp_path: Path) -> None:
    shutil.copytree(SERVICES_DIR / "pneumonia", tmp_path / "pneumonia", ignore=shutil.ignore_patterns("model"))
    copy_model_folder(tmp_path, "pneumonia", "lungs", "chest_xray", 50056)
    with pytest.raises(ValueError, match="share one exam_type: chest_xray"):
        model_specs(tmp_path)
