"""Which runtime should serve the models? Measure them side by side on this machine.

Times the same network — MobileNetV2 at 224x224 with a global-average-pool + dense head, the
architecture every shipped model uses — in TensorFlow (Keras, eager-free tf.function), LiteRT
(TFLite interpreter, XNNPACK) and ONNX Runtime (the exported graph, and each shipped model.onnx),
at batch 1 and 8, with the same thread count. Speed does not depend on the trained weights, so
the TensorFlow and LiteRT models are rebuilt here from the architecture; this keeps the comparison
reproducible from a fresh clone (no weights needed).

    python -m benchmarks.runtimes [--threads 2] [--seconds 8] [--out benchmarks/results]

Needs the training extra (TensorFlow, tf2onnx). Prints a table and writes a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _time(run: Callable[[np.ndarray], object], batch: np.ndarray, seconds: float) -> dict[str, float]:
    for _ in range(3):  # warm-up: graph building, allocations, caches
        run(batch)
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(latencies) < 5:
        t0 = time.perf_counter()
        run(batch)
        latencies.append(time.perf_counter() - t0)
    total = sum(latencies)
    return {
        "images_per_s": round(len(latencies) * len(batch) / total, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 2),
        "calls": len(latencies),
    }


def _keras_model(classes: int):
    import keras

    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(224, 224, 3))
    features = keras.layers.GlobalAveragePooling2D()(base.output)
    probabilities = keras.layers.Dense(classes, activation="softmax")(features)
    return keras.Model(base.input, probabilities)


def _onnx_session(path: str | Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(threads: int, seconds: float, batches: list[int]) -> dict:
    import tensorflow as tf
    import tf2onnx

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = _keras_model(classes=2)
    results: dict[str, dict[str, dict[str, float]]] = {}
    rng = np.random.default_rng(0)

    @tf.function(reduce_retracing=True)
    def tf_call(x):
        return model(x, training=False)

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        spec = (tf.TensorSpec((None, 224, 224, 3), tf.float32, name="input"),)
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(onnx_path))
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        tflite_path = Path(tmp) / "model.tflite"
        tflite_path.write_bytes(converter.convert())

        session = _onnx_session(onnx_path, threads)
        shipped = {
            task: _onnx_session(path, threads)
            for task in ("bone", "skin", "pneumonia")
            if (path := ROOT / "services" / task / "model" / "model.onnx").exists()
        }
        for size in batches:
            batch = rng.uniform(-1, 1, (size, 224, 224, 3)).astype(np.float32)
            row = results.setdefault(f"batch {size}", {})
            row["tensorflow (keras, tf.function)"] = _time(lambda x: tf_call(x).numpy(), batch, seconds)
            interpreter = tf.lite.Interpreter(model_path=str(tflite_path), num_threads=threads)
            interpreter.resize_tensor_input(0, list(batch.shape))
            interpreter.allocate_tensors()
            inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

            def tflite_call(x, interpreter=interpreter, inp=inp, out=out):
                interpreter.set_tensor(inp, x)
                interpreter.invoke()
                return interpreter.get_tensor(out)

            row["litert (tflite, xnnpack)"] = _time(tflite_call, batch, seconds)
            row["onnxruntime (same graph)"] = _time(lambda x: session.run(None, {"input": x}), batch, seconds)
            for task, task_session in shipped.items():
                row[f"onnxruntime (shipped {task})"] = _time(
                    lambda x, s=task_session: s.run(["probabilities"], {"input": x}), batch, seconds
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="Compare inference runtimes on this machine.")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per runtime and batch size")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    results = run(args.threads, args.seconds, args.batch)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "python": platform.python_version(),
    }
    try:
        machine["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    print(f"\nMachine: {machine}")
    for batch_name, row in results.items():
        tf_rate = row["tensorflow (keras, tf.function)"]["images_per_s"]
        print(f"\n{batch_name}:")
        print(f"  {'runtime':<34} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs TF':>7}")
        for name, figures in row.items():
            ratio = figures["images_per_s"] / tf_rate
            print(
                f"  {name:<34} {figures['images_per_s']:>9.1f} {figures['p50_ms']:>8.2f}"
                f" {figures['p99_ms']:>8.2f} {ratio:>6.1f}x"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"runtimes-{stamp}.json"
    path.write_text(json.dumps({"machine": machine, "results": results, "measured_at": stamp}, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
