"""The one list of model services: every `services/<task>/spec.py` that defines `SPEC`.

A fourth disease is a folder: `spec.py` (SPEC = TaskSpec(...)), `__main__.py` (`serve(SPEC)`) and
`model/`. The supervisor (`make run`), the gateway's defaults, the benchmarks and the image check
read this registry; nothing else lists the models by hand.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from services.core.spec import TaskSpec

SERVICES_DIR = Path(__file__).resolve().parent
# The router's exam type: what an upload asks for when it lets the platform choose.
AUTO = "auto"


def _load(path: Path, root: Path) -> ModuleType:
    if root == SERVICES_DIR:
        # The shipped tree: the same module objects as every `from services.<task>.spec import SPEC`.
        return importlib.import_module(f"services.{path.parent.name}.spec")
    # Another tree (a test's copy): loaded from its file, under a name of its own.
    name = f"drtech_models_{hashlib.sha256(str(root).encode()).hexdigest()[:12]}.{path.parent.name}"
    found = importlib.util.spec_from_file_location(name, path)
    assert found is not None and found.loader is not None
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


@functools.cache
def model_specs(root: Path = SERVICES_DIR) -> dict[str, TaskSpec]:
    """task -> spec of every model service under `root`, in default-port order (the router's last
    of the shipped ones). Raises ValueError where two folders clash or one is misnamed."""
    specs: list[TaskSpec] = []
    for path in sorted(root.glob("*/spec.py")):
        spec = getattr(_load(path, root), "SPEC", None)
        if not isinstance(spec, TaskSpec):
            continue    # services/core/spec.py defines TaskSpec itself
        if spec.task != path.parent.name:
            # `python -m services.<task>`, its certificate and its plots are found by folder name.
            raise ValueError(f"{path}: SPEC.task is {spec.task!r}; it must be the folder's name")
        specs.append(spec)
    specs.sort(key=lambda spec: (spec.default_port, spec.task))
    for field in ("exam_type", "default_port"):
        values = [getattr(spec, field) for spec in specs]
        clashes = sorted({str(value) for value in values if values.count(value) > 1})
        if clashes:
            raise ValueError(f"model services under {root} share one {field}: {', '.join(clashes)}")
    return {spec.task: spec for spec in specs}


def diagnosis_specs(root: Path = SERVICES_DIR) -> dict[str, TaskSpec]:
    """model_specs without the router: the services that diagnose an exam type."""
    return {task: spec for task, spec in model_specs(root).items() if spec.exam_type != AUTO}
