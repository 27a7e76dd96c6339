"""What test-time augmentation costs: the shipped skin and bone models next to the one-view model inside them.

    python -m benchmarks.tta_cost [--calls 40] [--threads 0]

Both variants are opened by the serving runtime (services.core.runtime.OnnxModel, the serving
session options) in this process; the one-view model is `training.tta.original_model` of the shipped
file. Calls alternate between the two so machine load affects both alike. Prints one JSON line per
task: median latency of one image and images/s at batch 8, each with the ratio. Not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from services.bone.spec import SPEC as BONE
from services.core.preprocessing import to_model_input
from services.core.runtime import OnnxModel
from services.skin.spec import SPEC as SKIN
from tests.support import synthetic_image
from training import tta

BATCH = 8


def _timed(model: OnnxModel, batch: np.ndarray) -> float:
    started = time.perf_counter()
    model.run(batch)
    return time.perf_counter() - started


def measure(spec, calls: int, threads: int) -> dict[str, object]:
    shipped_proto = onnx.load(str(spec.model_path))
    with tempfile.TemporaryDirectory() as tmp:
        one_view_path = Path(tmp) / "model.onnx"
        onnx.save(tta.original_model(shipped_proto), str(one_view_path))
        models = {"shipped": OnnxModel(spec, threads), "one_view": OnnxModel(spec, threads, model_path=one_view_path)}
    kind = "skin_lesion" if spec.task == "skin" else "bone_xray"
    images = np.stack([to_model_input(synthetic_image(kind, seed=seed), models["shipped"].input_size)
                       for seed in range(BATCH)])
    for model in models.values():
        model.warm_up()
    single = {name: [] for name in models}
    batched = {name: [] for name in models}
    for _ in range(calls):
        for name, model in models.items():
            single[name].append(_timed(model, images[:1]))
            batched[name].append(_timed(model, images))
    latency = {name: statistics.median(values) * 1000 for name, values in single.items()}
    rate = {name: BATCH / statistics.median(values) for name, values in batched.items()}
    return {
        "task": spec.task,
        "version": spec.load_card()["version"],
        "views": list(tta.TASK_VIEWS[spec.task]),
        "latency_ms_batch1": {name: round(value, 1) for name, value in latency.items()},
        "latency_ratio": round(latency["shipped"] / latency["one_view"], 2),
        f"images_per_s_batch{BATCH}": {name: round(value, 1) for name, value in rate.items()},
        "throughput_ratio": round(rate["one_view"] / rate["shipped"], 2),
        "calls": calls,
        "intra_op_threads": threads or "all cores",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = every core, the default)")
    args = parser.parse_args()
    for spec in (SKIN, BONE):
        print(json.dumps(measure(spec, args.calls, args.threads)), flush=True)


if __name__ == "__main__":
    main()
