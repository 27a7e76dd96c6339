"""The gate: each model refuses images that are not the kind it reads, from its own features.

    python -m training.gate --task {pneumonia,skin,bone,router} [--data DIR] [--model-dir DIR]

One command re-fits a task's gate on whatever model.onnx is shipped in services/<task>/model/ (a
retrained model needs nothing else), and writes it into that file and its card:

1. Features: the input of the model's final dense layer (for the MobileNetV2 models, the pooled
   1280-d backbone output), found in the ONNX graph by walking back from `probabilities` to the
   first MatMul/Gemm. A test-time-augmented model (training/tta.py) stacks its views on the batch
   axis; the gate reads the identity view's rows, so serving pays nothing but a dot product.
2. Images: genuine ones from the model's own split.csv (train rows fit, val rows set the threshold,
   test rows only measure); outside ones from training/outside_images.py (its `fit` split fits,
   its `measure` split, with held-out seeds, fonts, photos, scans and whole families, only
   measures) and the other two tasks' genuine images (their train rows fit, their test rows
   measure). Features are cached under training/cache/gate/ by model file and image set.
3. Gate: two candidates are fitted: a logistic regression, genuine vs outside, on standardised
   features (class-balanced, C by leave-one-family-out), and a Mahalanobis distance to the nearest
   genuine class mean (genuine images only; PCA + residual form to fit the size budget). Each
   threshold is the THRESHOLD_PERCENTILE-th percentile of the genuine validation images' scores:
   about (100 - percentile)% of genuine validation images are refused by design, and no outside
   image takes part in setting it. The one shipped is chosen on fit and validation images only
   (outside fit images refused, then genuine validation refused); the card reports both on the
   held-out measure set.
4. Export: the gate becomes graph nodes and one extra output `ood_ratio` [N, 1] (logistic:
   exp(logit - threshold); Mahalanobis: distance / threshold): above 1 the image is refused. An
   existing gate (or the router's former
   Mahalanobis `ood_ratio`) is removed first, so re-running replaces it. The file is checked
   against the NumPy gate (relative difference <= 1e-3) before it replaces model.onnx, and the
   probabilities of every other output are unchanged (the graph's other nodes are untouched).

Diagnosis services refuse an image whose `ood_ratio` > 1 with INVALID_ARGUMENT (reason
wrong_image_kind; the gateway answers 422 and keeps no record); the router's `ood_ratio` is read
by the gateway (gateway/auto_routing.py) as before.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training import outside_images
from training.paths import CACHE_DIR, PROJECT_ROOT, data_dir

log = logging.getLogger("training.gate")

TASKS = ("pneumonia", "skin", "bone", "router")
DIAGNOSIS_TASKS = ("pneumonia", "skin", "bone")
OUTPUT = "ood_ratio"
PREFIX = "gate/"
METADATA_KEY = "drtech.gate"
THRESHOLD_PERCENTILE = 99.0
# An `auto` upload passes the router's gate and then the routed model's, which refuses outside
# images and the other two kinds by itself: their refusals of genuine images add up, so the router's
# gate is a coarse filter that refuses only what lies beyond every genuine validation image.
# Bone: its test rows (another folder of the knee release) scored above the 99th percentile of its
# validation rows more often than 1% (FINDINGS.md, "Gates"), so its threshold sits further out.
TASK_PERCENTILE = {"router": 100.0, "bone": 99.5}
# Genuine images per split of split.csv; outside images per family and split; other tasks' images.
COUNTS = {"train": 600, "val": 600, "test": 600}
PER_FAMILY = {"fit": 80, "measure": 60}
OTHER_TASK = {"fit": 150, "measure": 150}
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
COMPONENTS = 256          # principal components the Mahalanobis gate keeps (the rest: one variance)
RATIO_TOLERANCE = 1e-3
CACHE = CACHE_DIR / "gate"
SEED = 20261207


def model_dir_of(task: str) -> Path:
    return PROJECT_ROOT / "services" / task / "model"


# ---- the ONNX graph -----------------------------------------------------------------------------
def _prune(graph) -> None:
    """Remove nodes and initializers that no graph output needs."""
    needed = {output.name for output in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(name in needed for name in node.output):
            keep.append(node)
            needed.update(name for name in node.input if name)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    value_info = [info for info in graph.value_info if info.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(value_info)


def strip_gate(proto):
    """A copy of `proto` without its `ood_ratio` output and the nodes only it needed."""
    import onnx

    stripped = onnx.ModelProto()
    stripped.CopyFrom(proto)
    outputs = [output for output in stripped.graph.output if output.name != OUTPUT]
    del stripped.graph.output[:]
    stripped.graph.output.extend(outputs)
    _prune(stripped.graph)
    metadata = [prop for prop in stripped.metadata_props if prop.key != METADATA_KEY]
    del stripped.metadata_props[:]
    stripped.metadata_props.extend(metadata)
    return stripped


def feature_tensor(proto) -> str:
    """The input of the last dense layer before `probabilities`: the features its head reads."""
    producers = {name: node for node in proto.graph.node for name in node.output}
    frontier, seen = ["probabilities"], set()
    while frontier:
        name = frontier.pop(0)
        node = producers.get(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in ("MatMul", "Gemm"):
            return node.input[0]
        frontier.extend(node.input)
    raise ValueError("no MatMul or Gemm before the `probabilities` output: cannot find the head's features")


def _views_node(proto):
    """The node stacking test-time-augmentation views (training/tta.py), or None."""
    from training.tta import is_wrapped

    if not is_wrapped(proto):
        return None
    for node in proto.graph.node:
        if node.op_type == "Concat" and node.output[0] == "tta/inner/input":
            if node.input[0] != "input":
                raise ValueError("the TTA views node does not take the plain input first")
            return node
    raise ValueError("a TTA-wrapped model without its views node")


def with_features(proto):
    """`proto` (gate stripped) plus a tensor `gate/features` [N, D]: the head's features of the
    identity view (the first N rows where views are stacked)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    source = feature_tensor(model)
    graph = model.graph
    if _views_node(model) is None:
        graph.node.append(helper.make_node("Identity", [source], [f"{PREFIX}features"], name=f"{PREFIX}features"))
        return model
    graph.initializer.extend([
        numpy_helper.from_array(np.array([0], dtype=np.int64), f"{PREFIX}zero"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), f"{PREFIX}one"),
    ])
    graph.node.extend([
        helper.make_node("Shape", ["input"], [f"{PREFIX}input_shape"], name=f"{PREFIX}input_shape"),
        helper.make_node("Slice", [f"{PREFIX}input_shape", f"{PREFIX}zero", f"{PREFIX}one"],
                         [f"{PREFIX}batch"], name=f"{PREFIX}batch"),
        # The views are stacked view by view: rows [0, N) are the image as uploaded.
        helper.make_node("Slice", [source, f"{PREFIX}zero", f"{PREFIX}batch", f"{PREFIX}zero"],
                         [f"{PREFIX}features"], name=f"{PREFIX}features"),
    ])
    return model


def extraction_model(proto) -> bytes:
    """A model whose only output is `gate/features`, running the backbone once per image (the views
    node, if any, passes the input through: the identity view is all the gate reads)."""
    import onnx
    from onnx import helper

    model = with_features(proto)
    views = _views_node(model)
    if views is not None:
        index = list(model.graph.node).index(views)
        model.graph.node.remove(views)
        model.graph.node.insert(index, helper.make_node("Identity", ["input"], list(views.output), name=views.name))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(f"{PREFIX}features", onnx.TensorProto.FLOAT, None))
    _prune(model.graph)
    return model.SerializeToString()


def add_logistic_gate(proto, weight: np.ndarray, bias: float, summary: dict):
    """`proto` (gate stripped) with the output `ood_ratio` = exp(features . weight + bias): the
    threshold is already folded into `bias`, so > 1 means refused."""
    import onnx
    from onnx import helper, numpy_helper

    model = with_features(proto)
    graph = model.graph
    graph.initializer.extend([
        numpy_helper.from_array(weight.reshape(-1, 1).astype(np.float32), f"{PREFIX}weight"),
        numpy_helper.from_array(np.array([bias], dtype=np.float32), f"{PREFIX}bias"),
    ])
    graph.node.extend([
        helper.make_node("MatMul", [f"{PREFIX}features", f"{PREFIX}weight"], [f"{PREFIX}score"], name=f"{PREFIX}score"),
        helper.make_node("Add", [f"{PREFIX}score", f"{PREFIX}bias"], [f"{PREFIX}margin"], name=f"{PREFIX}margin"),
        helper.make_node("Exp", [f"{PREFIX}margin"], [OUTPUT], name=f"{PREFIX}ratio"),
    ])
    graph.output.append(helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["N", 1]))
    model.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=json.dumps(summary)))
    onnx.checker.check_model(model)
    return model


# ---- the gate's maths ---------------------------------------------------------------------------
@dataclass
class LogisticGate:
    """Genuine (0) vs outside (1) logistic regression on standardised features, with a threshold."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    threshold: float = 0.0
    c: float = 1.0

    @classmethod
    def fit(cls, genuine: np.ndarray, outside: np.ndarray, c: float) -> LogisticGate:
        from sklearn.linear_model import LogisticRegression

        x = np.concatenate([genuine, outside]).astype(np.float64)
        y = np.concatenate([np.zeros(len(genuine)), np.ones(len(outside))])
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit((x - mean) / scale, y)
        return cls(mean, scale, model.coef_[0], float(model.intercept_[0]), c=c)

    def logit(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.coef + self.intercept

    def set_threshold(self, genuine_val: np.ndarray, percentile: float = THRESHOLD_PERCENTILE) -> None:
        """Refuse above the `percentile`-th percentile of genuine validation logits."""
        self.threshold = float(np.percentile(self.logit(genuine_val), percentile))

    def ratio(self, features: np.ndarray) -> np.ndarray:
        return np.exp(self.logit(features) - self.threshold)

    def folded(self) -> tuple[np.ndarray, float]:
        """(weight, bias) on raw features with standardisation and threshold folded in."""
        weight = self.coef / self.scale
        return weight, float(self.intercept - self.mean / self.scale @ self.coef - self.threshold)


class MahalanobisGate:
    """Distance to the nearest genuine class mean under a shared Ledoit-Wolf covariance, fitted on
    genuine images only, in top-k principal components + isotropic residual form (probabilistic
    PCA, as the router's former gate) so it fits the model-size budget:

    d_c(f) = sum_i (v_i . (f - mu_c))^2 / lambda_i + (||f - mu_c||^2 - sum_i (v_i . (f - mu_c))^2) / lambda_rest
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, components: int = COMPONENTS) -> None:
        from sklearn.covariance import LedoitWolf

        classes = np.unique(labels)
        self.means = np.stack([features[labels == k].mean(axis=0) for k in classes]).astype(np.float64)
        centred = features - self.means[np.searchsorted(classes, labels)]
        eigenvalues, eigenvectors = np.linalg.eigh(LedoitWolf().fit(centred).covariance_)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
        self.vectors = eigenvectors[:, :components]
        self.inverse_variances = 1.0 / eigenvalues[:components]
        rest = eigenvalues[components:]
        self.inverse_rest = float(1.0 / rest.mean()) if rest.size else 0.0
        self.threshold = 1.0

    def distance(self, features: np.ndarray) -> np.ndarray:
        diff = features[:, None, :] - self.means[None]                     # (N, C, D)
        projected = diff @ self.vectors                                     # (N, C, k)
        inside = (projected ** 2 * self.inverse_variances).sum(-1)
        rest = (diff ** 2).sum(-1) - (projected ** 2).sum(-1)
        return (inside + np.maximum(rest, 0.0) * self.inverse_rest).min(axis=1)

    def set_threshold(self, genuine_val: np.ndarray, percentile: float = THRESHOLD_PERCENTILE) -> None:
        self.threshold = float(np.percentile(self.distance(genuine_val), percentile))

    def ratio(self, features: np.ndarray) -> np.ndarray:
        return self.distance(features) / self.threshold


def add_mahalanobis_gate(proto, fitted: MahalanobisGate, summary: dict):
    """`proto` (gate stripped) with `ood_ratio` = the distance above / threshold."""
    import onnx
    from onnx import helper, numpy_helper

    model = with_features(proto)
    graph = model.graph
    means = fitted.means.astype(np.float32)
    constants = {
        "vectors": fitted.vectors.astype(np.float32),                                   # (D, k)
        "projected_means": (means @ fitted.vectors.astype(np.float32))[None],             # (1, C, k)
        "inverse_variances": fitted.inverse_variances.astype(np.float32),                 # (k,)
        "means_t": means.T.copy(),                                                         # (D, C)
        "mean_norms": (means ** 2).sum(-1)[None],                                          # (1, C)
        "minus_two": np.array(-2.0, dtype=np.float32),
        "zero_f": np.array(0.0, dtype=np.float32),
        "inverse_rest": np.array(fitted.inverse_rest, dtype=np.float32),
        "inverse_threshold": np.array(1.0 / fitted.threshold, dtype=np.float32),
        "last_axis": np.array([-1], dtype=np.int64),
        "middle_axis": np.array([1], dtype=np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(v, PREFIX + k) for k, v in constants.items())
    g = PREFIX

    def node(op: str, inputs: list[str], output: str, **attributes) -> None:
        graph.node.append(helper.make_node(op, [g + name for name in inputs], [g + output], name=g + output,
                                           **attributes))

    node("MatMul", ["features", "vectors"], "f_projected")                            # (N, k)
    node("Unsqueeze", ["f_projected", "middle_axis"], "f_projected_3d")               # (N, 1, k)
    node("Sub", ["f_projected_3d", "projected_means"], "projected")                  # (N, C, k)
    node("Mul", ["projected", "projected"], "projected_sq")
    node("Mul", ["projected_sq", "inverse_variances"], "scaled_sq")
    node("ReduceSum", ["scaled_sq", "last_axis"], "inside", keepdims=0)              # (N, C)
    node("ReduceSum", ["projected_sq", "last_axis"], "projected_norm", keepdims=0)   # (N, C)
    node("Mul", ["features", "features"], "f_sq")
    node("ReduceSum", ["f_sq", "last_axis"], "f_norm", keepdims=1)                   # (N, 1)
    node("MatMul", ["features", "means_t"], "f_dot_means")                           # (N, C)
    node("Mul", ["f_dot_means", "minus_two"], "cross")
    node("Add", ["f_norm", "cross"], "partial")
    node("Add", ["partial", "mean_norms"], "diff_norm")                              # ||f - mu_c||^2
    node("Sub", ["diff_norm", "projected_norm"], "rest_raw")
    node("Max", ["rest_raw", "zero_f"], "rest")
    node("Mul", ["rest", "inverse_rest"], "rest_scaled")
    node("Add", ["inside", "rest_scaled"], "distances")
    node("ReduceMin", ["distances"], "distance", axes=[1], keepdims=1)                # (N, 1)
    graph.node.append(helper.make_node("Mul", [g + "distance", g + "inverse_threshold"], [OUTPUT], name=g + "ratio"))
    graph.output.append(helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["N", 1]))
    model.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=json.dumps(summary)))
    onnx.checker.check_model(model)
    return model


def gate_bytes(width: int, classes: int, components: int = COMPONENTS) -> int:
    """At most what a gate adds to a model whose head reads `width` features, fitted on genuine
    images of `classes` labels (the split.csv labels: a Mahalanobis mean each):
    the Mahalanobis gate's float32 constants (the logistic gate's are one `width` vector), plus room
    for the nodes and the metadata. An export leaves this much under the size limit, so that either
    method can be chosen on its figures alone."""
    k = min(components, width)
    floats = width * k + classes * k + k + width * classes + classes + 8
    return 4 * floats + 16 * 1024


def add_gate(proto, fitted: LogisticGate | MahalanobisGate, summary: dict):
    if isinstance(fitted, LogisticGate):
        weight, bias = fitted.folded()
        return add_logistic_gate(proto, weight, bias, summary)
    return add_mahalanobis_gate(proto, fitted, summary)


# Refusing genuine images is a harm too: a method that refuses more than this share of the genuine
# check images (training rows the gate never fitted) is not chosen while another stays under it.
GENUINE_REFUSAL_LIMIT = 0.02


def select(candidates: dict[str, tuple[float, ...]]) -> str:
    """The method name whose (outside refused, genuine val refused[, genuine check refused]) is
    best: among the methods refusing at most GENUINE_REFUSAL_LIMIT of the genuine check images (all
    when none does), most outside images refused, then fewest genuine ones. Every figure comes from
    fit, check and validation images only."""
    within = [name for name, figures in candidates.items()
              if len(figures) < 3 or figures[2] <= GENUINE_REFUSAL_LIMIT]
    return max(within or candidates, key=lambda name: (round(candidates[name][0], 4), -candidates[name][1]))


def choose_c(genuine: np.ndarray, outside: np.ndarray, outside_family: np.ndarray,
             genuine_val: np.ndarray, percentile: float = THRESHOLD_PERCENTILE) -> tuple[float, int]:
    """C by leave-one-family-out on the fit images: for each fit family, fit without it, set the
    threshold on genuine validation images, and count how many of that family's images get
    through. The C letting fewest through wins (ties: the smaller C); returns (C, images let
    through). No measure image is used."""
    best: tuple[float, float] | None = None
    for c in C_GRID:
        missed = 0
        for family in np.unique(outside_family):
            held = outside_family == family
            gate = LogisticGate.fit(genuine, outside[~held], c)
            gate.set_threshold(genuine_val, percentile)
            missed += int((gate.ratio(outside[held]) <= 1.0).sum())
        log.info("C=%s: %d fit images of held-out families let through", c, missed)
        if best is None or missed < best[0]:
            best = (missed, c)
    return best[1], int(best[0])


# ---- images and features ------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageSet:
    """Named images with a family per image; `load(i)` gives the model input of image i."""

    name: str
    families: list[str]
    paths: list[Path | None]
    makers: list[tuple[str, str, int] | None]


def genuine_rows(task: str, root: Path, split: str, count: int, skip: int = 0) -> list[Path]:
    """`count` rows of the model's split.csv `split`, in a seeded order, after the first `skip`."""
    from training.evaluate import records_from_split_csv

    records = sorted(records_from_split_csv(model_dir_of(task) / "split.csv", root, split), key=lambda r: str(r.path))
    random.Random(f"{SEED}-{task}-{split}").shuffle(records)
    return [record.path for record in records[skip:skip + count]]


def genuine_set(tasks: Sequence[str], root: Path, split: str, count: int, skip: int = 0) -> ImageSet:
    paths: list[Path | None] = []
    families: list[str] = []
    for task in tasks:
        chosen = genuine_rows(task, root, split, count // len(tasks), skip // len(tasks))
        paths += chosen
        families += [task] * len(chosen)
    suffix = f"-after-{skip}" if skip else ""
    return ImageSet(f"genuine-{'+'.join(tasks)}-{split}-{count}{suffix}", families, paths, [None] * len(paths))


def outside_set(task: str, root: Path, split: str, per_family: int, other: int) -> ImageSet:
    """Generated families of `split` plus (diagnosis tasks) the other tasks' genuine images."""
    families: list[str] = []
    makers: list[tuple[str, str, int] | None] = []
    for family in outside_images.families(split):
        families += [family] * per_family
        makers += [(family, split, index) for index in range(per_family)]
    paths: list[Path | None] = [None] * len(families)
    if task in DIAGNOSIS_TASKS:
        csv_split = "train" if split == "fit" else "test"
        for other_task in DIAGNOSIS_TASKS:
            if other_task != task:
                chosen = genuine_rows(other_task, root, csv_split, other)
                paths += chosen
                families += [f"wrong:{other_task}"] * len(chosen)
                makers += [None] * len(chosen)
    name = f"outside-v{outside_images.VERSION}-{task}-{split}-{per_family}-{other}"
    return ImageSet(name, families, paths, makers)


def proto_width(proto, extractor: bytes) -> int:
    """The width of the gate's feature vector."""
    import onnxruntime as ort

    session = ort.InferenceSession(extractor, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    return int(session.run(None, {"input": np.zeros((1, *shape[1:]), dtype=np.float32)})[0].shape[-1])


def model_input(image_set: ImageSet, index: int, size: tuple[int, int]) -> np.ndarray:
    from services.core.preprocessing import to_model_input
    from training.inference import serving_input

    path = image_set.paths[index]
    if path is not None:
        return serving_input(path, size)
    return to_model_input(outside_images.make(*image_set.makers[index]), size)


def features_of(extractor: bytes, image_set: ImageSet, batch: int = 32) -> np.ndarray:
    """Gate features of every image in `image_set`, cached by extraction model and set name."""
    import onnxruntime as ort

    from services.core.runtime import input_size_of

    key = hashlib.sha256(extractor).hexdigest()[:16]
    cache = CACHE / f"{key}-{image_set.name}.npy"
    if cache.is_file():
        return np.load(cache)
    session = ort.InferenceSession(extractor, providers=["CPUExecutionProvider"])
    size = input_size_of(session.get_inputs()[0].shape, Path("model.onnx"))
    started, parts = time.monotonic(), []
    for start in range(0, len(image_set.families), batch):
        images = np.stack([model_input(image_set, i, size)
                           for i in range(start, min(start + batch, len(image_set.families)))])
        parts.append(session.run([f"{PREFIX}features"], {"input": images})[0])
    features = np.concatenate(parts).astype(np.float32)
    log.info("%s: %d images in %.0fs", image_set.name, len(features), time.monotonic() - started)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(cache, features)
    return features


# ---- rates --------------------------------------------------------------------------------------
def proportion(successes: int, trials: int) -> dict[str, float]:
    from training.router import proportion as exact

    return {"n": trials, "count": successes, **exact(successes, trials)}


def refusal_by_family(ratio: np.ndarray, families: Sequence[str]) -> dict[str, dict[str, float]]:
    names = np.asarray(families)
    return {family: proportion(int((ratio[names == family] > 1.0).sum()), int((names == family).sum()))
            for family in dict.fromkeys(families)}


# ---- card ---------------------------------------------------------------------------------------
CARD_START, CARD_END = "<!-- gate: written by python -m training.gate -->", "<!-- /gate -->"


def _pct(metric: dict) -> str:
    return f"{100 * metric['value']:.1f}% ({metric['count']}/{metric['n']}; 95% CI {100 * metric['ci95_low']:.1f}-{100 * metric['ci95_high']:.1f}%)"


def card_section(gate: dict) -> str:
    m = gate["measured"]
    families = ", ".join(f"{family} {100 * rate['value']:.0f}%" for family, rate in m["outside_by_family"].items())
    lines = [
        CARD_START,
        "## Gate: images this model does not read",
        f"- {gate['method']}",
        (f"- Output `{OUTPUT}` ({'exp(logit - threshold)' if gate['kind'] == 'logistic' else 'distance / threshold'}); "
        f"above 1 the image is refused: {gate['refusal']}"),
        (f"- Outside images refused (held out: other seeds, fonts, photos, scans, whole families): "
        f"**{_pct(m['outside'])}**; by family: {families}."),
        (f"- Genuine test images refused (split.csv test rows): **{_pct(m['genuine_test'])}**; "
        f"validation (where the threshold was set): {_pct(m['genuine_val'])}."),
        (f"- For comparison, {gate['comparison']['method']}: outside refused "
        f"{_pct(gate['comparison']['outside'])}, genuine test refused {_pct(gate['comparison']['genuine_test'])}."),
        f"- Reproduce: `{gate['command']}`",
        CARD_END,
    ]
    return "\n".join(lines)


def write_card(model_dir: Path, gate: dict, model_bytes: int, by_image: dict[str, float] | None = None) -> None:
    """Add the gate and the gated model's size to card.json, and re-render card.md. The router's
    card also gets its own out-of-distribution figures re-measured with the new `ood_ratio`
    (`by_image`: its training.router.ood_images set, which its card lists image by image)."""
    card_path = model_dir / "card.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["gate"] = gate
    card["model_bytes"] = model_bytes
    outputs = card.get("architecture", {}).get("outputs")
    if isinstance(outputs, list) and OUTPUT not in outputs:
        outputs.append(OUTPUT)
    if card.get("task") != "router":
        from training import card as model_card

        model_card.write(card, model_dir)       # card.md with its gate section (training.card.write)
        return
    # The router's former Mahalanobis rejection is replaced by this gate.
    card["ood"] = {"method": gate["method"], "threshold": gate["threshold"],
                   "output": f"{OUTPUT} > 1 means none of the three kinds",
                   "see": "gate"}
    metrics = card.get("metrics", {})
    metrics["false_rejection_rate"] = {k: gate["measured"]["genuine_test"][k] for k in ("value", "ci95_low", "ci95_high")}
    if by_image is not None:
        from training.router import proportion as exact

        rejected = sum(ratio > 1 for ratio in by_image.values())
        metrics["ood_rejection_rate"] = exact(rejected, len(by_image))
        metrics["ood_n"] = len(by_image)
        metrics["ood_accepted"] = [name for name, ratio in by_image.items() if not ratio > 1]
        metrics["ood_ratio_by_image"] = by_image
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    from training import router

    router.write_card(card, model_dir)      # its text names the rejection method and rates
    card_md = model_dir / "card.md"
    text = card_md.read_text(encoding="utf-8") if card_md.is_file() else ""
    if CARD_START in text and CARD_END in text:
        head, _, rest = text.partition(CARD_START)
        text = head + card_section(gate) + rest.partition(CARD_END)[2]
    else:
        text = text.rstrip("\n") + "\n\n" + card_section(gate) + "\n"
    card_md.write_text(text, encoding="utf-8")


# ---- the command --------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    import onnx
    import onnxruntime as ort

    parser = argparse.ArgumentParser(prog="python -m training.gate", description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--data", help="dataset root (default DRTECH_DATA_DIR or ../shared/data)")
    parser.add_argument("--model-dir", type=Path, help="default services/<task>/model")
    parser.add_argument("--percentile", type=float,
                        help=f"threshold: this percentile of genuine validation scores (default {THRESHOLD_PERCENTILE:g}; "
                             f"{TASK_PERCENTILE})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.monotonic()
    root = data_dir(args.data)
    model_dir = args.model_dir or model_dir_of(args.task)
    model_path = model_dir / "model.onnx"
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} does not exist: train and export the {args.task} model first")

    proto = strip_gate(onnx.load(str(model_path)))
    extractor = extraction_model(proto)
    genuine_tasks = DIAGNOSIS_TASKS if args.task == "router" else (args.task,)
    sets = {split: genuine_set(genuine_tasks, root, split, COUNTS[split]) for split in COUNTS}
    # Training rows the gate never fits: genuine images from the training side of the validation's
    # shift (pneumonia validates on other patient ids), where a threshold set on validation must hold too.
    sets["check"] = genuine_set(genuine_tasks, root, "train", COUNTS["train"], skip=COUNTS["train"])
    genuine = {split: features_of(extractor, image_set) for split, image_set in sets.items()}
    outside_sets = {split: outside_set(args.task, root, split, PER_FAMILY[split], OTHER_TASK[split])
                    for split in outside_images.SPLITS}
    outside = {split: features_of(extractor, image_set) for split, image_set in outside_sets.items()}
    fit_families = np.asarray(outside_sets["fit"].families)

    percentile = args.percentile or TASK_PERCENTILE.get(args.task, THRESHOLD_PERCENTILE)
    c, logistic_missed = choose_c(genuine["train"], outside["fit"], fit_families, genuine["val"], percentile)
    labels = np.asarray(sets["train"].families)      # router: the kind of each genuine image
    if args.task != "router":
        from training.evaluate import records_from_split_csv

        label_of = {str(r.path): r.label for r in records_from_split_csv(model_dir / "split.csv", root, "train")}
        labels = np.asarray([label_of[str(path)] for path in sets["train"].paths])
    fitted: dict[str, LogisticGate | MahalanobisGate] = {
        "logistic": LogisticGate.fit(genuine["train"], outside["fit"], c),
        "mahalanobis": MahalanobisGate(genuine["train"], labels),
    }
    # Which method ships, from fit and validation images only: outside fit images refused (the
    # Mahalanobis gate never saw them; the logistic one counted leave-one-family-out), then genuine
    # validation images refused with the threshold set on the other half of validation.
    halves = np.arange(len(genuine["val"])) % 2 == 0
    choice: dict[str, tuple[float, float]] = {}
    for name, candidate in fitted.items():
        refused_val = 0
        for half in (halves, ~halves):
            candidate.set_threshold(genuine["val"][half], percentile)
            refused_val += int((candidate.ratio(genuine["val"][~half]) > 1).sum())
        candidate.set_threshold(genuine["val"], percentile)
        outside_refused = (1 - logistic_missed / len(outside["fit"]) if name == "logistic"
                           else float((candidate.ratio(outside["fit"]) > 1).mean()))
        refused_check = float((candidate.ratio(genuine["check"]) > 1).mean()) if len(genuine["check"]) else 0.0
        choice[name] = (outside_refused, refused_val / len(genuine["val"]), refused_check)
    method = select(choice)
    log.info("selection (outside fit refused, genuine val refused across halves, genuine check refused): %s -> %s",
             choice, method)
    gate = fitted[method]
    other = fitted["mahalanobis" if method == "logistic" else "logistic"]

    def rates(ratio_of) -> dict:
        measured_outside = ratio_of(outside["measure"])
        return {
            "outside": proportion(int((measured_outside > 1).sum()), len(measured_outside)),
            "outside_by_family": refusal_by_family(measured_outside, outside_sets["measure"].families),
            "genuine_val": proportion(int((ratio_of(genuine["val"]) > 1).sum()), len(genuine["val"])),
            "genuine_test": proportion(int((ratio_of(genuine["test"]) > 1).sum()), len(genuine["test"])),
            "genuine_test_by_task": refusal_by_family(ratio_of(genuine["test"]), sets["test"].families),
        }

    measured = rates(gate.ratio)
    compared = rates(other.ratio)
    log.info("%s gate: outside refused %s, genuine test refused %s", method,
             _pct(measured["outside"]), _pct(measured["genuine_test"]))
    log.info("by family: %s", {k: round(v["value"], 3) for k, v in measured["outside_by_family"].items()})
    log.info("the other method: outside refused %s, genuine test refused %s", _pct(compared["outside"]),
             _pct(compared["genuine_test"]))

    summary = {"method": method, "c": c, "threshold_percentile": percentile}
    gated = add_gate(proto, gate, summary)
    # The exported ratio must be the fitted one: check on real images through the whole graph.
    from services.core.runtime import input_size_of

    session = ort.InferenceSession(gated.SerializeToString(), providers=["CPUExecutionProvider"])
    size = input_size_of(session.get_inputs()[0].shape, model_path)
    check = np.stack([model_input(sets["test"], i, size) for i in range(16)]
                     + [model_input(outside_sets["measure"], i, size)
                        for i in range(0, len(outside_sets["measure"].families), 40)])
    check_features = np.concatenate([genuine["test"][:16], outside["measure"][::40]])
    exported = session.run([OUTPUT], {"input": check})[0][:, 0]
    expected = gate.ratio(check_features)
    relative = float(np.max(np.abs(np.log(exported) - np.log(expected))))
    if relative > RATIO_TOLERANCE:
        raise AssertionError(f"the exported {OUTPUT} differs from the fitted gate by {relative:.2e} (log ratio)")
    from training.export import MAX_MODEL_BYTES

    data = gated.SerializeToString()
    if len(data) > MAX_MODEL_BYTES:
        raise ValueError(f"{model_path}: gated model is {len(data)} bytes, over {MAX_MODEL_BYTES}; not written")
    model_path.write_bytes(data)

    families = sorted(set(outside_sets["fit"].families))
    features_note = (f"the {proto_width(proto, extractor)}-d features the head reads (`{feature_tensor(proto)}`"
                     f"{', identity view' if _views_node(proto) is not None else ''})")
    descriptions = {
        "logistic": (f"logistic regression (C={c}, class-balanced, chosen leave-one-family-out on the fit images) "
                     f"on {features_note}, standardised, genuine vs outside images"),
        "mahalanobis": (f"Mahalanobis distance of {features_note} to the nearest genuine class mean "
                        f"(Ledoit-Wolf shared covariance, top {COMPONENTS} principal components + isotropic "
                        "residual), fitted on genuine images only"),
    }
    record = {
        "method": (f"{descriptions[method]}; threshold = the {percentile:g}th percentile of genuine "
                   f"validation scores. Chosen over the other method by outside fit images refused, then "
                   f"genuine validation images refused, among methods refusing at most "
                   f"{100 * GENUINE_REFUSAL_LIMIT:g}% of {len(genuine['check'])} genuine training rows the gate "
                   "never fitted (fit, check and validation images only): "
                   + "; ".join(f"{name} {100 * out:.1f}%, {100 * val:.1f}% and {100 * check:.1f}%"
                               for name, (out, val, check) in choice.items())),
        "kind": method,
        "refusal": ("the service answers INVALID_ARGUMENT (reason wrong_image_kind) naming what it reads"
                    if args.task != "router" else "the gateway refuses exam_type=auto uploads with 422"),
        "output": OUTPUT,
        "threshold": gate.threshold,
        "c": c,
        "threshold_percentile_of_validation": percentile,
        "fitted_on": {
            "genuine": f"{len(genuine['train'])} split.csv train rows ({'+'.join(genuine_tasks)})",
            "outside": f"{len(outside['fit'])} images: families {families} (training/outside_images.py, fit split)",
        },
        "measured_on": {
            "genuine": f"{len(genuine['test'])} split.csv test rows; threshold on {len(genuine['val'])} val rows",
            "outside": (f"{len(outside['measure'])} images: the measure split (other seeds, fonts, photos, "
                        f"scans; families {list(outside_images.MEASURE_ONLY)} never fitted) and other tasks' test rows"),
        },
        "measured": measured,
        "comparison": {"method": descriptions["mahalanobis" if method == "logistic" else "logistic"], **compared},
        "command": f"python -m training.gate --task {args.task}" + (f" --percentile {args.percentile:g}" if args.percentile else ""),
        "seconds": round(time.monotonic() - started, 1),
    }
    by_image = None
    if args.task == "router":
        from services.core.preprocessing import to_model_input
        from training.router import ood_images

        named = ood_images()
        ratios = session.run([OUTPUT], {"input": np.stack([to_model_input(image, size) for _, image in named])})[0]
        by_image = {name: round(float(ratio), 3) for (name, _), ratio in zip(named, ratios[:, 0], strict=True)}
    write_card(model_dir, record, len(data), by_image)
    log.info("%s: gate written to %s (%d bytes) in %.0fs", args.task, model_path, len(data), time.monotonic() - started)
    return 0


if __name__ == "__main__":
    from training.cli import run

    raise SystemExit(run(main))
