"""The gateway's model catalog: exam types as the services say them, the registry standing in until
a service has answered."""

from __future__ import annotations

from types import SimpleNamespace

import anyio
import grpc

from gateway.model_catalog import ModelCatalog
from protos.drtech.v1 import diagnosis_pb2
from services.registry import model_specs


class Answers:
    """A model service stub whose GetModelInfo says `exam_type`; counts the calls."""

    def __init__(self, exam_type: str, display_name: str = "") -> None:
        self.info = diagnosis_pb2.ModelInfo(exam_type=exam_type, exam_display_name=display_name)
        self.calls = 0

    async def GetModelInfo(self, request: object, timeout: float) -> diagnosis_pb2.ModelInfo:  # noqa: N802
        self.calls += 1
        return self.info


class Down:
    async def GetModelInfo(self, request: object, timeout: float) -> None:  # noqa: N802
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())


def catalog(models: dict[str, object]) -> ModelCatalog:
    return ModelCatalog(SimpleNamespace(models=models), model_specs(), timeout_s=1.0)  # type: ignore[arg-type]


def test_until_a_service_answers_its_registry_spec_says_what_it_serves() -> None:
    down = catalog({"bone": Down(), "router": Down()})
    assert down.service("bone_xray") == "bone" and down.service("auto") == "router"
    assert down.exam_types() == ["bone_xray", "auto"]
    assert anyio.run(down.resolve, "bone_xray") == "bone"   # known: nobody is asked
    assert anyio.run(down.resolve, "lung_xray") is None


def test_an_exam_type_not_known_yet_is_learnt_from_the_services_that_have_not_answered() -> None:
    lungs = Answers("lung_xray", "Lung X-ray")
    bone = Answers("bone_xray")
    found = catalog({"lungs": lungs, "bone": bone, "router": Answers("auto")})
    assert found.service("lung_xray") is None                  # no spec of that name in the registry
    assert anyio.run(found.resolve, "lung_xray") == "lungs"
    assert (lungs.calls, bone.calls) == (1, 1)
    assert anyio.run(found.resolve, "nothing") is None        # those that answered are not asked again
    assert (lungs.calls, bone.calls) == (1, 1)
    assert [(exam.exam_type, exam.display_name) for exam in found.exams()] == [
        ("lung_xray", "Lung X-ray"), ("bone_xray", ""), ("auto", "")]   # settings order, router last


def test_what_a_service_says_replaces_its_registry_spec() -> None:
    renamed = catalog({"pneumonia": Answers("chest_xray_v2")})
    assert renamed.service("chest_xray") == "pneumonia"
    assert [info.exam_type for info in anyio.run(renamed.all_model_info)] == ["chest_xray_v2"]
    assert renamed.service("chest_xray") is None and renamed.service("chest_xray_v2") == "pneumonia"
