"""Training plots shipped next to each model (services/<task>/model/*.png), served for the model cards.

Training writes its figures (learning curves, ROC, calibration, confusion matrix) as PNGs beside
model.onnx; the gateway lists and serves them read-only. Only plain `*.png` names directly in the
model folder of a model service the gateway calls (settings.model_addrs) are served, so a request
can never reach another file.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from gateway.context import ContextDep
from gateway.errors import ApiError
from gateway.whole_file import WholeFileResponse

router = APIRouter(prefix="/api/v1")

_PLOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.png$")


def plot_names(models_dir: Path, task: str, tasks: Collection[str]) -> list[str]:
    """The PNG file names in `<models_dir>/<task>/model/`, sorted; [] for a task not in `tasks` or no
    folder."""
    if task not in tasks:
        return []
    folder = models_dir / task / "model"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and _PLOT_NAME.fullmatch(p.name))


def plot_url(task: str, name: str) -> str:
    return f"/api/v1/models/{task}/plots/{name}"


@router.get("/models/{task}/plots")
async def list_plots(task: str, ctx: ContextDep) -> dict[str, list[str]]:
    tasks = ctx.settings.model_addrs
    if task not in tasks:
        raise ApiError(404, f"No model named {task!r}; models are {', '.join(tasks)}.")
    names = await run_in_threadpool(plot_names, ctx.settings.models_dir, task, tasks)
    return {"plots": [plot_url(task, name) for name in names]}


@router.get("/models/{task}/plots/{name}", response_class=WholeFileResponse)
async def get_plot(task: str, name: str, ctx: ContextDep) -> WholeFileResponse:
    names = await run_in_threadpool(plot_names, ctx.settings.models_dir, task, ctx.settings.model_addrs)
    if name not in names:
        raise ApiError(404, f"The {task} model has no plot named {name!r}.")
    return WholeFileResponse(
        ctx.settings.models_dir / task / "model" / name,
        media_type="image/png",
        headers={"Cache-Control": "public, max-age=300"},
    )
