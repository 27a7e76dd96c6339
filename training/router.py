"""The router model: which of the three kinds of image an upload is, or none of them.

`python -m training.router --data DIR [--out services/router/model]`

- Labels: chest_xray (Kermany), skin_lesion (HAM10000), bone_xray (knee KL), read in their own
  layouts by training/datasets.py and split 70/15/15 by patient/lesion (training/splits.py), then
  sampled to a few hundred images per kind and split (the three kinds are easy to tell apart).
- Model: frozen ImageNet MobileNetV2 (training/backbone.py) pooled features + a multinomial logistic
  regression head (its C chosen on the validation split). Exported with the usual `probabilities`
  and `cam` outputs, so it runs on the shared serving core like every other model service.
- Out-of-distribution rejection without OOD training data: a Mahalanobis distance of the pooled
  features to the nearest class mean under a shared (Ledoit-Wolf) covariance, approximated by its top
  principal components plus an isotropic residual term (probabilistic PCA) so the matrix fits the
  size budget. The threshold is the 99th percentile of the in-distribution *validation* distances;
  the graph outputs `ood_ratio` = distance / threshold, and the gateway rejects an image whose ratio
  is above 1. Non-medical images (scikit-image and scikit-learn bundled photos, pydicom's CT and MR
  test slices, generated noise, gradients and text) are only used to *measure* the rejection rate.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from services.core.preprocessing import to_model_input
from training.datasets import Record, read_ham10000, read_kermany, read_knee_kl
from training.export import MAX_MODEL_BYTES, OPSET, PARITY_TOLERANCE
from training.paths import MODEL_VERSION, PROJECT_ROOT, data_dir, weights_dir
from training.splits import SEED, SplitRecord, train_val_test_split

log = logging.getLogger("training.router")

LABELS = ("chest_xray", "skin_lesion", "bone_xray")
DISPLAY = {"chest_xray": "Chest X-ray", "skin_lesion": "Skin lesion (dermoscopy)", "bone_xray": "Bone X-ray (knee)"}
DEFAULT_OUT = PROJECT_ROOT / "services" / "router" / "model"
# Images sampled per kind from each split (after the group split, so no patient straddles two).
PER_KIND = {"train": 600, "val": 200, "test": 300}
COMPONENTS = 256          # principal components kept for the Mahalanobis distance
THRESHOLD_PERCENTILE = 99.0
# Out-of-distribution photos: the scikit-image samples bundled in its wheel. Samples it fetches
# over the network (eagle, lily, kidney, human_mitosis, skin) are left out, so a run never downloads
# (where pooch is installed it would) and the set is the same on every machine.
SKIMAGE_SAMPLES = ("astronaut", "camera", "cat", "coffee", "coins", "horse", "hubble_deep_field",
                   "immunohistochemistry", "moon", "page", "text", "rocket", "grass", "gravel", "brick",
                   "colorwheel", "logo", "clock", "checkerboard", "stereo_motorcycle", "retina",
                   "microaneurysms", "cell")


def split_by_kind(root: Path) -> dict[str, list[SplitRecord]]:
    """Every kind's records with its 70/15/15 group split (the same seeded splitter as the models)."""
    return {
        "chest_xray": train_val_test_split(read_kermany(root, "train")),
        "skin_lesion": train_val_test_split(read_ham10000(root)),
        "bone_xray": train_val_test_split(read_knee_kl(root, "train")),
    }


def sample(split: Sequence[SplitRecord], name: str, count: int, seed: int = SEED) -> list[Record]:
    records = sorted((s.record for s in split if s.split == name), key=lambda r: str(r.path))
    random.Random(f"{seed}-{name}").shuffle(records)
    return records[:count]


# ---- out-of-distribution images (evaluation only) -----------------------------------------------
def _to_rgb(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        array = ((array - low) / (high - low or 1.0) * 255).astype(np.uint8)
    image = Image.fromarray(array)
    return image.convert("RGB")


def _text_image(seed: int) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", (400, 300), (255, 255, 255) if seed % 2 else (250, 245, 230))
    draw = ImageDraw.Draw(image)
    words = "the quick brown fox jumps over the lazy dog invoice total amount patient report".split()
    for row in range(14):
        draw.text((10, 10 + row * 20), " ".join(rng.choice(words) for _ in range(8)), fill=(0, 0, 0))
    return image


def ood_images() -> list[tuple[str, Image.Image]]:
    """Images that are none of the three kinds, all available offline."""
    import pydicom.data
    import skimage.data
    from sklearn.datasets import load_sample_images

    from services.core.imaging import decode_image

    images: list[tuple[str, Image.Image]] = []
    for name in SKIMAGE_SAMPLES:
        value = getattr(skimage.data, name)()
        if isinstance(value, tuple):
            value = value[0]
        value = np.asarray(value)
        if value.ndim == 3 and value.shape[-1] not in (3, 4):
            value = value[value.shape[0] // 2]           # a 3-D stack: its middle slice
        if value.ndim == 3 and value.shape[-1] == 4:
            value = value[..., :3]
        images.append((f"skimage.{name}", _to_rgb(value)))
    for index, array in enumerate(load_sample_images().images):
        images.append((f"sklearn.sample_{index}", _to_rgb(array)))
    for name in ("CT_small.dcm", "MR_small.dcm"):
        path = pydicom.data.get_testdata_file(name)
        images.append((f"pydicom.{name}", decode_image(Path(path).read_bytes()).convert("RGB")))
    rng = np.random.default_rng(SEED)
    for index in range(5):
        images.append((f"noise.uniform_{index}", _to_rgb(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))))
        images.append((f"noise.gray_{index}", _to_rgb(rng.normal(128, 40, (224, 224)).clip(0, 255).astype(np.uint8))))
        ramp = np.linspace(0, 255, 224, dtype=np.float32)
        gradient = np.stack([np.add.outer(ramp * (index + 1) / 5, ramp * (4 - index) / 5)] * 3, axis=-1)
        images.append((f"gradient_{index}", _to_rgb(gradient)))
        images.append((f"text_{index}", _text_image(index)))
    for colour in ((0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 30, 30)):
        images.append((f"solid_{colour}", Image.new("RGB", (224, 224), colour)))
    return images


# ---- features -----------------------------------------------------------------------------------
def pooled_of_images(backbone, images: Sequence[Image.Image]) -> np.ndarray:
    """Pooled backbone features of in-memory images, through the shared preprocessing."""
    batch = np.stack([to_model_input(image) for image in images])
    return backbone.predict(batch, batch_size=32, verbose=0).mean(axis=(1, 2))


def pooled_of_records(backbone, records: Sequence[Record], name: str) -> np.ndarray:
    from training.features import extract

    return extract(backbone, [r.path for r in records], f"router-{name}").pooled


# ---- head and distance --------------------------------------------------------------------------
def fit_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray):
    """Multinomial logistic regression; C chosen by validation log-loss. Returns (kernel, bias, C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    best = None
    for c in (0.01, 0.03, 0.1, 0.3, 1.0):
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train)
        loss = log_loss(y_val, model.predict_proba(x_val), labels=range(len(LABELS)))
        if best is None or loss < best[0]:
            best = (loss, c, model)
    _, c, model = best
    return model.coef_.T.astype(np.float32), model.intercept_.astype(np.float32), c


class Mahalanobis:
    """Shared-covariance Mahalanobis distance to the nearest class mean, in top-k PCA + residual form.

    d_c(f) = sum_i (v_i . (f - mu_c))^2 / lambda_i + (||f - mu_c||^2 - sum_i (v_i . (f - mu_c))^2) / lambda_rest
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, components: int = COMPONENTS) -> None:
        from sklearn.covariance import LedoitWolf

        self.means = np.stack([features[labels == k].mean(axis=0) for k in range(len(LABELS))])
        centred = features - self.means[labels]
        covariance = LedoitWolf().fit(centred).covariance_
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
        self.vectors = eigenvectors[:, :components].astype(np.float32)         # (D, k)
        self.inverse_variances = (1.0 / eigenvalues[:components]).astype(np.float32)
        rest = eigenvalues[components:]
        # With every component kept there is no residual term (and the distance is exact).
        self.inverse_rest = np.float32(1.0 / rest.mean()) if rest.size else np.float32(0.0)

    def distance(self, features: np.ndarray) -> np.ndarray:
        diff = features[:, None, :] - self.means[None, :, :]                   # (N, C, D)
        projected = diff @ self.vectors                                         # (N, C, k)
        inside = (projected ** 2 * self.inverse_variances).sum(-1)
        rest = (diff ** 2).sum(-1) - (projected ** 2).sum(-1)
        return (inside + np.maximum(rest, 0.0) * self.inverse_rest).min(axis=1)


# ---- export -------------------------------------------------------------------------------------
def build_router_model(backbone, kernel: np.ndarray, bias: np.ndarray, ood: Mahalanobis, threshold: float):
    """Keras model: image -> probabilities, cam, ood_ratio (distance / threshold, > 1 = reject)."""
    import keras

    from training.export import build_export_model

    base = build_export_model(backbone, kernel, bias)
    pooled = base.get_layer("pooled").output

    means = ood.means.astype(np.float32)                                         # (C, D)
    projected_means = means @ ood.vectors                                       # (C, k)

    def distance(f):
        ops = keras.ops
        f_proj = ops.matmul(f, ood.vectors)                                     # (N, k)
        proj = ops.expand_dims(f_proj, 1) - projected_means[None]               # (N, C, k)
        inside = ops.sum(ops.square(proj) * ood.inverse_variances, axis=-1)
        sq = (ops.sum(ops.square(f), axis=-1, keepdims=True) - 2.0 * ops.matmul(f, means.T)
              + np.sum(means ** 2, axis=-1)[None])                               # ||f - mu_c||^2
        rest = ops.maximum(sq - ops.sum(ops.square(proj), axis=-1), 0.0)
        nearest = ops.min(inside + rest * ood.inverse_rest, axis=-1, keepdims=True)
        return nearest / np.float32(threshold)

    ood_ratio = keras.layers.Lambda(distance, name="ood_ratio")(pooled)
    return keras.Model(base.input, [*base.outputs, ood_ratio], name="drtech_router")


OUTPUTS = ("probabilities", "cam", "ood_ratio")


def to_onnx(model, path: Path) -> Path:
    """tf2onnx (opset 17) with the contract's input and output names."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    proto, _ = tf2onnx.convert.from_keras(
        model, input_signature=[tf.TensorSpec((None, 224, 224, 3), tf.float32, name="input")],
        opset=OPSET, output_path=None,
    )
    renames = dict(zip([o.name for o in proto.graph.output], OUTPUTS, strict=True))
    for node in proto.graph.node:
        node.output[:] = [renames.get(o, o) for o in node.output]
        node.input[:] = [renames.get(i, i) for i in node.input]
    for output in proto.graph.output:
        output.name = renames[output.name]
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size} bytes, over the {MAX_MODEL_BYTES}-byte limit")
    return path


# ---- card ---------------------------------------------------------------------------------------
def _rate(metric: dict[str, float]) -> str:
    return f"{metric['value']:.3f} (95% CI {metric['ci95_low']:.3f}-{metric['ci95_high']:.3f})"


def write_card(card: dict, out: Path) -> None:
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    m = card["metrics"]
    by_kind = ", ".join(f"{kind} {_rate(m['accuracy_' + kind])}" for kind in LABELS)
    lines = [
        f"# Model card: {card['name']} {card['version']}",
        "",
        "**Not for clinical use.** Routes an upload sent with `exam_type=auto` to the model for its kind "
        "of image, and refuses images that are none of the three.",
        "",
        "## Model",
        f"- {card['architecture']['backbone']}; head: {card['architecture']['head']}.",
        f"- Out-of-distribution rejection: {card['ood']['method']}",
        f"- Threshold: {card['ood']['threshold']:.1f} (the {THRESHOLD_PERCENTILE:g}th percentile of "
        "in-distribution validation distances); output `ood_ratio` = distance / threshold, rejected when > 1.",
        "",
        "## Data",
        f"- {card['data']['source']}",
        f"- Licences: {card['data']['licence']}",
        f"- Split: {card['split']['method']}; images used: {json.dumps(card['split']['images'])}",
        "",
        "## Held-out results (test split, never used for any choice)",
        f"- Routing accuracy: **{_rate(m['accuracy'])}** on {m['n']} images of the three kinds "
        f"({by_kind}).",
        f"- Genuine test images wrongly rejected as none of the three: {_rate(m['false_rejection_rate'])}.",
        f"- Non-medical and other images rejected: **{_rate(m['ood_rejection_rate'])}** of {m['ood_n']}; "
        f"accepted: {', '.join(m['ood_accepted']) or 'none'}.",
        "  The set: scikit-image and scikit-learn bundled photos (cat, astronaut, coffee, rocket, text, "
        "fundus, microscopy, ...), pydicom's CT_small and MR_small slices, uniform and Gaussian noise, "
        "gradients, rendered text, solid colours.",
        "",
        "## Limitations",
        *[f"- {text}" for text in card["limitations"]],
        "",
        f"Reproduce: `{card['command']}`",
        "",
    ]
    (out / "card.md").write_text("\n".join(lines), encoding="utf-8")


def proportion(successes: int, trials: int) -> dict[str, float]:
    """A rate with its 95% Clopper-Pearson interval (honest at 0% and 100%, unlike a bootstrap),
    in the model cards' metric shape."""
    from scipy.stats import binomtest

    interval = binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="exact")
    return {"value": successes / trials, "ci95_low": float(interval.low), "ci95_high": float(interval.high)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset root (default DRTECH_DATA_DIR or ../shared/data)")
    parser.add_argument("--weights", help="MobileNetV2 .npy folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.monotonic()
    root = data_dir(args.data)

    from training.backbone import build_backbone

    backbone = build_backbone(weights_dir(args.weights))
    splits = split_by_kind(root)
    x: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    y: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    chosen: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
    for index, kind in enumerate(LABELS):
        for split_name, count in PER_KIND.items():
            records = sample(splits[kind], split_name, count)
            x[split_name].append(pooled_of_records(backbone, records, f"{kind}-{split_name}-{count}"))
            y[split_name].append(np.full(len(records), index))
            chosen[split_name] += records
    X = {k: np.concatenate(v) for k, v in x.items()}
    Y = {k: np.concatenate(v) for k, v in y.items()}

    kernel, bias, c = fit_head(X["train"], Y["train"], X["val"], Y["val"])
    ood = Mahalanobis(X["train"], Y["train"])
    threshold = float(np.percentile(ood.distance(X["val"]), THRESHOLD_PERCENTILE))
    log.info("head C=%s, OOD threshold %.1f", c, threshold)

    model = build_router_model(backbone, kernel, bias, ood, threshold)
    out: Path = args.out
    onnx_path = to_onnx(model, out / "model.onnx")

    # Everything below is measured through the exported ONNX graph.
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        parts = [session.run(list(OUTPUTS), {"input": images[i:i + 64]}) for i in range(0, len(images), 64)]
        return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(OUTPUTS)}

    from training.features import load_image

    test_images = np.stack([load_image(r.path) for r in chosen["test"]])
    test_out = run(test_images)
    keras_probabilities = model.predict(test_images[:64], verbose=0)[0]
    parity = float(np.abs(keras_probabilities - test_out["probabilities"][:64]).max())
    if parity > PARITY_TOLERANCE:
        raise AssertionError(f"ONNX/Keras parity failed: {parity:.2e}")
    # The distance inside the graph must be the one the threshold was set with.
    expected_ratio = ood.distance(X["test"]) / threshold
    ratio_parity = float(np.max(np.abs(test_out["ood_ratio"][:, 0] - expected_ratio) / np.maximum(expected_ratio, 1e-6)))
    if ratio_parity > 1e-3:
        raise AssertionError(f"ONNX ood_ratio differs from the fitted distance by {ratio_parity:.2e} (relative)")
    correct = test_out["probabilities"].argmax(1) == Y["test"]
    false_rejections = test_out["ood_ratio"][:, 0] > 1.0

    named = ood_images()
    ood_out = run(np.stack([to_model_input(image) for _, image in named]))
    rejected = ood_out["ood_ratio"][:, 0] > 1.0
    per_image = {name: round(float(r), 3) for (name, _), r in zip(named, ood_out["ood_ratio"][:, 0], strict=True)}
    log.info("OOD ratios: %s", per_image)

    metrics = {
        "split": "test (held out by patient/lesion; never used for any choice)",
        "measured_with": "ONNX Runtime on model.onnx with the shared preprocessing",
        "interval": "95% Clopper-Pearson (exact binomial)",
        "n": int(len(correct)),
        "accuracy": proportion(int(correct.sum()), len(correct)),
        **{f"accuracy_{k}": proportion(int(correct[Y["test"] == i].sum()), int((Y["test"] == i).sum()))
           for i, k in enumerate(LABELS)},
        "false_rejection_rate": proportion(int(false_rejections.sum()), len(false_rejections)),
        "ood_rejection_rate": proportion(int(rejected.sum()), len(rejected)),
        "ood_n": int(len(named)),
        "ood_accepted": [name for (name, _), r in zip(named, rejected, strict=True) if not r],
        "ood_ratio_by_image": per_image,
    }
    command = "nice -n 5 python -m training.router --data ../shared/data"
    card = {
        "name": "router",
        "version": MODEL_VERSION,
        "task": "router",
        "exam_type": "auto",
        "labels": list(LABELS),
        "label_names": DISPLAY,
        "architecture": {
            "backbone": "MobileNetV2 (alpha 1.0, 224x224), ImageNet weights (TF-slim checkpoint, Apache 2.0), frozen",
            "head": f"global average pool -> Dense(3, softmax) fitted as logistic regression (C={c}, on validation)",
            "outputs": list(OUTPUTS),
            "format": f"ONNX opset {OPSET} (tf2onnx from Keras)",
        },
        "model_bytes": onnx_path.stat().st_size,
        "export": {"probabilities_max_abs_diff_keras_onnx": parity, "ood_ratio_max_rel_diff_numpy_onnx": ratio_parity},
        "ood": {
            "method": (f"Mahalanobis distance of the pooled features to the nearest class mean, shared "
                       f"Ledoit-Wolf covariance, top {COMPONENTS} principal components + isotropic residual; "
                       "no out-of-distribution data used to fit or to set the threshold"),
            "threshold": threshold,
            "threshold_percentile_of_validation": THRESHOLD_PERCENTILE,
            "output": "ood_ratio = distance / threshold; > 1 means none of the three kinds",
        },
        "data": {
            "source": ("Kermany pediatric chest X-rays (train folder), HAM10000 dermatoscopic images, "
                       "OAI knee radiographs graded by Kellgren-Lawrence (train folder)"),
            "licence": "CC BY 4.0 (Kermany; knee KL), CC BY-NC 4.0 non-commercial (HAM10000)",
        },
        "split": {
            "method": ("each dataset split 70/15/15 by patient/lesion (StratifiedGroupKFold, seeded, as the "
                       f"diagnosis models), then {PER_KIND} images sampled per kind and split"),
            "seed": SEED,
            "images": {k: int(len(v)) for k, v in Y.items()},
        },
        "metrics": metrics,
        "intended_use": ("Choose which Dr.Tech model reads an upload sent with exam_type=auto, and refuse "
                         "images that are not a chest X-ray, a dermoscopy photo or a knee radiograph."),
        "limitations": [
            "Knows only the three training sources: other chest X-ray views, adult chest films, other "
            "bones than the knee or clinical (non-dermoscopic) skin photos may be routed wrongly or rejected.",
            "The threshold (the 99th percentile of validation distances) refuses about 1% of genuine "
            f"validation images by design; on the test images it refused {_rate(metrics['false_rejection_rate'])} "
            "(false_rejection_rate). Choose the exam type explicitly when that happens.",
            "Rejection was measured on a small set of non-medical and CT/MR images; it is not a guarantee "
            "for every kind of image.",
            "Not for clinical use.",
        ],
        "command": command,
        "seconds": round(time.monotonic() - started, 1),
    }
    write_card(card, out)
    log.info("router: accuracy %s, OOD rejection %s, false rejection %s -> %s", _rate(metrics["accuracy"]),
             _rate(metrics["ood_rejection_rate"]), _rate(metrics["false_rejection_rate"]), out)
    return 0


if __name__ == "__main__":
    from training.cli import run

    raise SystemExit(run(main))
