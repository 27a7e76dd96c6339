"""Which model service serves which exam type, and how the web UI names it: the gateway's only
knowledge of the models, so a fourth one needs no change here.

Each service says it itself (GetModelInfo: exam type, its display name and summary), asked for
/api/v1/models and when an upload names an exam type not known yet. Until a service
has answered, the registry's spec of the same name (services/<task>/spec.py, which the image ships)
stands in for it, so an upload for a service that is down from the start still gets a `failed`
record to retry rather than a refusal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from gateway.grpc_clients import Backends
from protos.drtech.v1 import diagnosis_pb2
from services.core.spec import TaskSpec
from services.registry import AUTO

log = logging.getLogger("gateway.model_catalog")


@dataclass(frozen=True)
class ServedExam:
    service: str        # the model service's name in settings.model_addrs
    exam_type: str
    display_name: str   # "Chest X-ray"
    summary: str        # "pneumonia or normal"


class ModelCatalog:
    def __init__(self, backends: Backends, specs: Mapping[str, TaskSpec], timeout_s: float) -> None:
        self._backends = backends
        self._timeout_s = timeout_s
        self._known = {
            name: ServedExam(name, spec.exam_type, spec.exam_display_name, spec.exam_summary)
            for name, spec in specs.items() if name in backends.models
        }
        self._answered: set[str] = set()

    def service(self, exam_type: str) -> str | None:
        """The name of the model service for `exam_type` (AUTO: the router), None when none is known."""
        return next((known.service for known in self._known.values() if known.exam_type == exam_type), None)

    def exams(self) -> list[ServedExam]:
        """Every exam type known now, in settings order, the router's (AUTO) last."""
        known = [self._known[name] for name in self._backends.models if name in self._known]
        return sorted(known, key=lambda exam: exam.exam_type == AUTO)

    def exam_types(self) -> list[str]:
        """The exam types an upload may name now (AUTO among them)."""
        return [exam.exam_type for exam in self.exams()]

    async def model_info(self, service: str) -> diagnosis_pb2.ModelInfo | None:
        """The service's GetModelInfo, learnt from; None (logged) when it does not answer."""
        try:
            info = await self._backends.models[service].GetModelInfo(
                diagnosis_pb2.GetModelInfoRequest(), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as error:
            log.warning("model info for %s unavailable: %s", service, error.code().name)
            return None
        self._known[service] = ServedExam(service, info.exam_type, info.exam_display_name, info.exam_summary)
        self._answered.add(service)
        return info

    async def all_model_info(self) -> list[diagnosis_pb2.ModelInfo]:
        """Every service's GetModelInfo, asked at once, in settings order, the router's last; those
        that answered."""
        infos = await asyncio.gather(*(self.model_info(name) for name in self._backends.models))
        return sorted((info for info in infos if info is not None), key=lambda info: info.exam_type == AUTO)

    async def resolve(self, exam_type: str) -> str | None:
        """service(exam_type), after asking the services that have not answered yet when it is unknown."""
        found = self.service(exam_type)
        if found is None:
            await asyncio.gather(*(self.model_info(name) for name in self._backends.models
                                   if name not in self._answered))
            found = self.service(exam_type)
        return found
