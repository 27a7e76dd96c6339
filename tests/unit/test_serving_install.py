"""The serving install has no TensorFlow: resolve the `serving` extra's requirements through the
installed distributions' own metadata and look for TensorFlow (or Keras) anywhere in the closure."""

from __future__ import annotations

import tomllib
from importlib import metadata

from packaging.requirements import Requirement

from tests.support import ROOT

FORBIDDEN = {"tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "keras", "tf-keras",
             "tensorboard", "tf2onnx"}


def _name(requirement: Requirement) -> str:
    return requirement.name.lower().replace("_", "-")


def resolved(requirements: list[str], extras: set[str]) -> set[str]:
    """Every distribution these requirements pull in (as installed here), markers evaluated."""
    seen: set[str] = set()
    pending = [(Requirement(text), extras) for text in requirements]
    while pending:
        requirement, active = pending.pop()
        if requirement.marker and not any(
            requirement.marker.evaluate({"extra": extra}) for extra in (active or {""})
        ):
            continue
        name = _name(requirement)
        if name in seen:
            continue
        seen.add(name)
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue   # not installed here (e.g. a platform-only dependency): nothing below it to follow
        pending += [(Requirement(text), set(requirement.extras)) for text in distribution.requires or []]
    return seen


def test_the_serving_extra_resolves_without_tensorflow() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    closure = resolved(project["dependencies"] + project["optional-dependencies"]["serving"], set())
    assert "onnxruntime" in closure and "numpy" in closure      # the resolution really walked the tree
    assert not closure & FORBIDDEN, f"the serving install pulls in {sorted(closure & FORBIDDEN)}"


def test_the_bench_extra_is_where_tensorflow_lives() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    bench = {_name(Requirement(text)) for text in extras["bench"]}
    assert {"tensorflow-cpu", "flask"} <= bench


def test_the_resolution_finds_tensorflow_where_it_is() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "tensorflow-cpu" in resolved(extras["training"], set())
