"""Train, export and document one shipped model.

    python -m training.train --task {bone,skin,pneumonia} --data DIR [--out services/T/model]
        [--finetune-blocks N | --backbone-weights RUN/model.weights.h5]
    python -m training.train --task {skin,pneumonia} --arch NAME ...   (training.experiments.arch_training)

`--backbone-weights` takes a `python -m training.finetune` run (end-to-end fine-tuning of the whole
MobileNetV2, e.g. on a GPU): its backbone replaces the ImageNet one below and its own head joins
the candidate heads. `--arch` trains one of training.architectures end to end instead.

The pipeline, one function per step (`main` calls them in this order):
    split      the task's group split (training.tasks), written as split.csv
    features   frozen MobileNetV2 (or an end-to-end run's backbone) features, cached, plus the
               training images' extra views (--augment)
    heads      optionally fine-tune the top N blocks on cached activations; refit the heads
               (dropout + Dense softmax, L2 chosen on validation); keep the better head per output
    calibrate  one temperature per head, fitted on its validation logits (training.calibration)
    export     ONNX with CAM, Keras/ONNX parity on real images, float16 weights when over the limit
    evaluate   held-out test metrics and test calibration through ONNX Runtime
    card       card.json + card.md (and, with --tta, the test-time-augmented model: training.tta)

The temperatures are baked into model.onnx, so serving, the held-out test metrics and the card's test
ECE all come from the calibrated model. Every Keras fit kept (heads, fine-tuning) is drawn as
training_curves*.png next to the model. Bone trains on MURA (normal/abnormal, no KL head) when the
data root holds MURA-v1.1/, else on the knee KL data.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training import card as model_card
from training import plots, tta
from training.backbone import build_backbone
from training.calibration import fit_temperature, logits_of_calibrated, temperature_report
from training.evaluate import binary_targets, outputs_for, score_outputs
from training.features import MID_LAYER, Features, extract, load_image
from training.heads import TrainedHead, finetune_top, pooled_from_mid, softmax_probabilities, train_head
from training.datasets import KL_GRADES
from training.metrics import point_values
from training.paths import MODEL_VERSION, PROJECT_ROOT, VERSION_PATTERN, data_dir
from training.splits import SEED, SplitRecord, assert_trained_on_split, counts, write_split_csv
from training.inference import run_onnx
from training.tasks import SPECS, TRAINING, label_index, load_split, uses_mura

log = logging.getLogger("training.train")
# --augment: the views (training.features.VIEWS) whose features are added as training rows.
AUGMENT_VIEWS: dict[str, list[str]] = {"none": [], "horizontal": ["horizontal"],
                                       "flips": ["horizontal", "vertical", "both"]}


def _balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score
    return float(balanced_accuracy_score(y, p.argmax(1)))


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float((p.argmax(1) == y).mean())


def _end_to_end_backbone(task: str, weights_file: Path, imagenet_weights: str | None):
    """The backbone and head of a training.finetune run (its history.json must sit beside the weights)."""
    import hashlib

    import keras

    from training.architectures import FINETUNED
    from training.finetune import build_model

    history_file = weights_file.parent / "history.json"
    record = json.loads(history_file.read_text(encoding="utf-8"))
    arch = record["settings"]["arch"]
    if record["task"] != task or arch not in FINETUNED:
        raise ValueError(f"{weights_file} is a {record['task']}/{arch} run, "
                         f"not {task}/{' or '.join(FINETUNED)}")
    input_size = tuple(record.get("input_size", (224, 224)))
    # --weights names MobileNetV2's folder; EfficientNet-Lite2 reads its own default (overwritten below anyway)
    model = build_model(arch, task, imagenet_weights if arch == "mobilenet_v2_finetuned" else None,
                        input_size=input_size)
    model.load_weights(weights_file)
    backbone = keras.Model(model.input, model.get_layer("gap").input, name=f"{arch}_backbone")
    kernel, bias = (np.asarray(w) for w in model.get_layer("probabilities").get_weights())
    head = TrainedHead(kernel, bias, l2=0.0, val_score=float("nan"), epochs=record["best_epoch"])
    # Trained in this run or in any run it continued from
    runs = [record, *record.get("previous_runs", [])]
    batchnorm = ("BatchNorm trained" if any(run["settings"].get("train_batchnorm") for run in runs)
                 else "BatchNorm frozen")
    trained = ("blocks 1-16 + Conv_1; the stem and block 0 frozen" if arch == "mobilenet_v2_finetuned"
               else "all 21 blocks and the head convolution; the stem frozen")
    info = {
        "arch": arch,
        "blocks": 16 if arch == "mobilenet_v2_finetuned" else 21, "batchnorm": batchnorm,
        "end_to_end": f"python -m training.finetune --arch {arch} ({trained}; {batchnorm})",
        "weights_sha256": hashlib.sha256(weights_file.read_bytes()).hexdigest(),
        "device": record["device"], "keras_backend": record["keras_backend"],
        "fit_seconds": record["fit_seconds"], "best_epoch": record["best_epoch"],
        "epochs_run": record["epochs_run"], "best_validation_score": round(record["best_validation_score"], 4),
        "monitor": record["settings"]["monitor"], "settings": record["settings"],
        "augmentation": record["augmentation"], "previous_runs": record.get("previous_runs", []),
        "input_size": list(input_size),
    }
    if record.get("recovered_from"):
        info["recovered_from"] = record["recovered_from"]
    return backbone, head, info


HEAD_CHOICES = ("best", "refit", "jointly-trained")


def choose_head(refit: TrainedHead, jointly_trained: TrainedHead | None,
                finetune_info: dict | None, prefer: str = "best") -> tuple[TrainedHead, str, str]:
    """(head, where it came from, its class weighting): the head refit on the pooled features (balanced
    class weights), or the one trained with the fine-tuned blocks when it scored higher on validation
    (`prefer` "best"), or the one named by `prefer`."""
    if prefer not in HEAD_CHOICES:
        raise ValueError(f"unknown head choice {prefer!r}; expected one of {HEAD_CHOICES}")
    if prefer == "jointly-trained" and jointly_trained is None:
        raise ValueError("--head jointly-trained: there is no jointly trained head (give --backbone-weights "
                         "or --finetune-blocks)")
    refit_wins = jointly_trained is None or jointly_trained.val_score <= refit.val_score
    if prefer == "refit" or (prefer == "best" and refit_wins):
        return refit, "head refit on pooled features", "balanced"
    # An end-to-end run's head learned with that run's class weights (--finetune-blocks: balanced)
    weighting = (finetune_info or {}).get("settings", {}).get("class_weight", "balanced")
    return jointly_trained, jointly_trained_source(finetune_info), weighting


def jointly_trained_source(finetune_info: dict | None) -> str:
    """What the run's own head is: trained with its blocks, or, for weights taken straight out of an
    exported model by training.recover_weights (no training of their own), that model's head."""
    recovered = (finetune_info or {}).get("recovered_from")
    if recovered:
        there = f"; there: {recovered['head_source']}" if recovered.get("head_source") else ""
        return f"head of {recovered['model']} {recovered['version']} (training.recover_weights{there})"
    return "head trained jointly with the fine-tuned blocks"


def _refit_curve_label(head_name: str, shipped: bool) -> str:
    """What a refit head's training-curves plot shows, saying so when that head lost to the jointly
    trained one (whose curves are the fine-tuning plot)."""
    label = f"{head_name} head (refit on pooled features)"
    return label if shipped else f"{label}; not the shipped head, see training_curves_finetune.png"


@dataclass
class Rows:
    """The train and validation images' features, one row each, then one row per extra view of a
    training image (--augment); validation rows are never augmented."""
    features: Features
    labels: list[str]       # dataset labels (knee: KL grades), one per row
    is_train: np.ndarray    # bool per row: a training row, else a validation row


@dataclass
class Heads:
    """The heads chosen on validation, with what the card and calibration need of them."""
    pooled: np.ndarray                  # pooled features of every row (after any top-block fine-tuning)
    y: np.ndarray                       # label index of every row (-1: no binary label, knee KL1)
    validation_rows: np.ndarray         # bool: validation rows with a label of the main head
    head: TrainedHead
    refit: TrainedHead                  # the head refit on the pooled features (drawn as training curves)
    finetune_head: TrainedHead | None   # the head trained with fine-tuned blocks or by an end-to-end run
    finetune_info: dict | None
    info: dict                          # the card's heads section
    validation: dict[str, float]
    kl_grades: np.ndarray | None = None  # knee: KL grade of every row, for the KL head
    kl_head: TrainedHead | None = None
    kl_refit: TrainedHead | None = None


@dataclass
class Calibration:
    temperature: float
    kl_temperature: float
    report: dict            # the card's calibration section; evaluate adds the test rows' figures


@dataclass
class Exported:
    model: Any              # the Keras serving graph
    onnx_path: Path
    parity: dict[str, float]
    parity_images: int
    storage: dict


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(SPECS))
    parser.add_argument("--data", help="dataset root (default: DRTECH_DATA_DIR or ../shared/data)")
    parser.add_argument("--weights", help="MobileNetV2 .npy folder (default: DRTECH_WEIGHTS_DIR or ../shared/weights)")
    parser.add_argument("--out", type=Path, help="output folder (default: services/<task>/model)")
    parser.add_argument("--finetune-blocks", type=int, default=0, choices=range(0, 11),
                        help="fine-tune the last N MobileNetV2 blocks (+ Conv_1); 0 = frozen backbone")
    parser.add_argument("--mid-layer", default=MID_LAYER, choices=(MID_LAYER, "block_6_project_BN"),
                        help="cached activation fine-tuning starts from (block_6: up to 10 blocks, slower)")
    parser.add_argument("--finetune-epochs", type=int, default=15)
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    parser.add_argument("--backbone-weights", type=Path,
                        help="model.weights.h5 of a `python -m training.finetune` run of this task: its whole "
                        "fine-tuned MobileNetV2 is the backbone, and its own head is a candidate head")
    parser.add_argument("--augment", choices=tuple(AUGMENT_VIEWS) + ("views",), default="none",
                        help="add features of training images seen in other views: horizontal flip; flips "
                        "(horizontal, vertical, both); views = every view of the task's test-time "
                        "augmentation (skin: the 8 flips and quarter turns, bone: the mirror)")
    parser.add_argument("--tta", action="store_true",
                        help="after export, average over the task's symmetric views (training.tta: skin 8, bone 2); "
                        "the card keeps the one-view figures under architecture.test_time_augmentation")
    parser.add_argument("--head", choices=HEAD_CHOICES, default="best",
                        help="best: the head (refit, or trained with the blocks) with the higher validation "
                        "score; refit or jointly-trained: that one (e.g. a run's own head, trained with its "
                        "--class-weight, when the refit's full class balancing costs accuracy for a score "
                        "within noise)")
    parser.add_argument("--version", default=MODEL_VERSION,
                        help=f"the model version in its card, shown with every answer (default {MODEL_VERSION})")
    args = parser.parse_args(argv)
    if not re.fullmatch(VERSION_PATTERN, args.version):
        parser.error(f"--version {args.version!r}: use letters, digits, '.', '+' or '-' (e.g. 2026.11.2)")
    if args.augment == "views" and args.task not in tta.TASK_VIEWS:
        parser.error(f"--augment views: no flip or rotation leaves a {args.task} diagnosis unchanged")
    if args.tta and args.task not in tta.TASK_VIEWS:
        parser.error(f"--tta: no flip or rotation leaves a {args.task} diagnosis unchanged "
                     f"(tasks with views: {', '.join(sorted(tta.TASK_VIEWS))})")
    # Blocks after the cached layer can be fine-tuned: 3 after block 13, 10 after block 6.
    available = 16 - int(args.mid_layer.split("_")[1])
    if args.finetune_blocks > available:
        parser.error(f"--finetune-blocks {args.finetune_blocks}: only {available} blocks follow {args.mid_layer}")
    if args.head == "jointly-trained" and not (args.backbone_weights or args.finetune_blocks):
        parser.error("--head jointly-trained needs a jointly trained head: "
                     "--backbone-weights or --finetune-blocks")
    if args.backbone_weights and args.finetune_blocks:
        parser.error("--backbone-weights is already fine-tuned end to end: leave out --finetune-blocks")
    return args


def split_step(task: str, root: Path, out: Path) -> list[SplitRecord]:
    """The task's group split, written as split.csv beside the model."""
    split = load_split(task, root)
    write_split_csv(split, out / "split.csv", root)
    log.info("split: %s", json.dumps(counts(split)))
    return split


def features_step(args: argparse.Namespace, split: list[SplitRecord],
                  root: Path) -> tuple[Any, Rows, TrainedHead | None, dict | None]:
    """(backbone, rows, the end-to-end run's own head, that run's record): the ImageNet backbone, or a
    training.finetune run's, and the features of the train and validation images through it."""
    task = args.task
    train_val = [s for s in split if s.split in ("train", "val")]
    feature_name = task
    if args.backbone_weights:
        assert_trained_on_split(args.backbone_weights.parent / "split.csv", split, root)
        backbone, end_to_end_head, finetune_info = _end_to_end_backbone(task, args.backbone_weights, args.weights)
        feature_name = f"{task}-{finetune_info['weights_sha256'][:12]}"
    else:
        backbone, end_to_end_head, finetune_info = build_backbone(args.weights), None, None
    # An end-to-end backbone is not fine-tuned further from a cached layer: no mid activations.
    mid_layer = None if args.backbone_weights else args.mid_layer
    features = extract(backbone, [s.record.path for s in train_val], feature_name, mid_layer=mid_layer)
    labels = [s.record.label for s in train_val]
    is_train = np.array([s.split == "train" for s in train_val])
    # View augmentation: knees are mirror images left/right; dermatoscopy has no up/down or left/right.
    views = ([v for v in tta.TASK_VIEWS[task] if v != "none"] if args.augment == "views"
             else AUGMENT_VIEWS[args.augment])
    train_paths = [s.record.path for s in train_val if s.split == "train"]
    train_labels = [s.record.label for s in train_val if s.split == "train"]
    for view in views:
        extra = extract(backbone, train_paths, feature_name, view=view, mid_layer=mid_layer)
        features = Features(np.concatenate([features.pooled, extra.pooled]),
                            np.concatenate([features.mid, extra.mid]),
                            None if features.seconds is None or extra.seconds is None
                            else features.seconds + extra.seconds)
        labels += train_labels
        is_train = np.concatenate([is_train, np.ones(len(train_paths), dtype=bool)])
    return backbone, Rows(features, labels, is_train), end_to_end_head, finetune_info


def heads_step(args: argparse.Namespace, backbone: Any, rows: Rows, end_to_end_head: TrainedHead | None,
               finetune_info: dict | None, has_kl: bool) -> Heads:
    """Optionally fine-tune the top blocks on the cached activations, refit the heads on the pooled
    features, and keep, per output, the head that scores higher on validation."""
    task, spec, is_train = args.task, SPECS[args.task], rows.is_train
    pooled = rows.features.pooled
    finetune_head = None
    if end_to_end_head is not None:
        # Score the end-to-end run's own head on validation, like the other candidate heads.
        y_e2e = np.array([int(lab) for lab in rows.labels]) if has_kl else \
            np.array([-1 if label_index(task, lab) is None else label_index(task, lab) for lab in rows.labels])
        keep = ~is_train & (y_e2e >= 0)
        probabilities = softmax_probabilities(pooled[keep], end_to_end_head.kernel, end_to_end_head.bias)
        end_to_end_head.val_score = (_accuracy if has_kl else _balanced_accuracy)(y_e2e[keep], probabilities)
        finetune_head = end_to_end_head
        log.info("end-to-end head on validation: %.4f", end_to_end_head.val_score)
    if args.finetune_blocks:
        # Knees fine-tune on the exact KL grade (all images, unweighted, scored by accuracy); the
        # other tasks on their own labels for balanced accuracy with balanced class weights.
        y_ft = np.array([int(lab) for lab in rows.labels]) if has_kl else \
            np.array([label_index(task, lab) for lab in rows.labels])
        n_ft = len(KL_GRADES) if has_kl else len(spec.labels)
        finetune_head, finetune_info = finetune_top(
            backbone, rows.features.mid[is_train], y_ft[is_train], rows.features.mid[~is_train], y_ft[~is_train],
            n_ft, args.finetune_blocks, score=_accuracy if has_kl else _balanced_accuracy,
            balanced=not has_kl, epochs=args.finetune_epochs, learning_rate=args.finetune_lr, seed=SEED,
            mid_layer=args.mid_layer)
        finetune_info["blocks"] = args.finetune_blocks
        finetune_info["from_cached_layer"] = args.mid_layer
        pooled = pooled_from_mid(backbone, rows.features.mid, mid_layer=args.mid_layer)

    # The main head: binary bone excludes KL1 ("doubtful"); the others use every image.
    y = np.array([-1 if label_index(task, lab) is None else label_index(task, lab) for lab in rows.labels])
    used = y >= 0
    tr, va = is_train & used, ~is_train & used
    refit = train_head(pooled[tr], y[tr], pooled[va], y[va], len(spec.labels), _balanced_accuracy, seed=SEED)
    # A knee run's jointly trained head is a KL head: a candidate for the KL head below, not this one
    jointly_trained = finetune_head if finetune_info and not has_kl else None
    head, head_source, head_class_weight = choose_head(refit, jointly_trained, finetune_info, args.head)
    val_probabilities = softmax_probabilities(pooled[va], head.kernel, head.bias)
    validation = point_values(TRAINING[task].metric_set(), y[va], val_probabilities)
    info = {"probabilities": {"l2": head.l2, "epochs": head.epochs, "class_weight": head_class_weight,
                              "dropout": 0.3, "source": head_source,
                              "selected_by": ("validation balanced accuracy" if args.head == "best"
                                              else f"named: --head {args.head}")}}
    heads = Heads(pooled, y, va, head, refit, finetune_head, finetune_info, info, validation)
    if has_kl:
        kl = np.array([int(lab) for lab in rows.labels])
        # Exact-grade accuracy is the KL target, so this head is fit without class re-weighting.
        kl_head = kl_refit = train_head(pooled[is_train], kl[is_train], pooled[~is_train], kl[~is_train],
                                        len(KL_GRADES), _accuracy, balanced=False, seed=SEED)
        kl_source = "head refit on pooled features"
        if finetune_info and finetune_head.val_score > kl_head.val_score:
            kl_head, kl_source = finetune_head, jointly_trained_source(finetune_info)
        validation["kl_grade_accuracy"] = round(kl_head.val_score, 4)
        info["kl_probabilities"] = {"l2": kl_head.l2, "epochs": kl_head.epochs, "class_weight": "none",
                                    "dropout": 0.3, "source": kl_source,
                                    "selected_by": "validation KL exact accuracy"}
        heads.kl_grades, heads.kl_head, heads.kl_refit = kl, kl_head, kl_refit
    log.info("validation: %s", json.dumps(validation))
    return heads


def calibrate_step(heads: Heads, is_train: np.ndarray) -> Calibration:
    """One temperature per head, fitted on validation logits only (never on test rows)."""
    va, y = heads.validation_rows, heads.y
    val_logits = heads.pooled[va] @ heads.head.kernel + heads.head.bias
    temperature = round(fit_temperature(val_logits, y[va]), 6)
    report = {"probabilities": {"temperature": temperature,
                                "validation": temperature_report(val_logits, y[va], temperature)}}
    kl_temperature = 1.0
    if heads.kl_head is not None:
        kl_val_logits = heads.pooled[~is_train] @ heads.kl_head.kernel + heads.kl_head.bias
        kl_temperature = round(fit_temperature(kl_val_logits, heads.kl_grades[~is_train]), 6)
        report["kl_probabilities"] = {
            "temperature": kl_temperature,
            "validation": temperature_report(kl_val_logits, heads.kl_grades[~is_train], kl_temperature)}
    log.info("calibration on validation: %s", json.dumps(report))
    return Calibration(temperature, kl_temperature, report)


def curves_step(heads: Heads, backbone_weights: Path | None, out: Path) -> dict[str, str]:
    """Training curves of every fit the run kept (the L2 grid's other fits are not kept):
    {PNG file name: the fit it shows}."""
    curves = {}
    fits = {"training_curves.png": (_refit_curve_label("probabilities", heads.head is heads.refit), heads.refit,
                                    "probabilities head")}
    if heads.kl_head is not None:
        fits["training_curves_kl.png"] = (_refit_curve_label("kl_probabilities", heads.kl_head is heads.kl_refit),
                                          heads.kl_refit, "KL grade head")
    if backbone_weights:
        finetune_curves = backbone_weights.parent / "training_curves.png"
        if finetune_curves.is_file():
            shutil.copyfile(finetune_curves, out / "training_curves_finetune.png")
            curves["training_curves_finetune.png"] = "end-to-end fine-tuning (training.finetune)"
    elif heads.finetune_info:
        fits["training_curves_finetune.png"] = ("fine-tuning of the top blocks with its own head",
                                                heads.finetune_head, "fine-tuning")
    for name, (fit, trained, title) in fits.items():
        if trained.history:
            plots.training_curves(trained.history, out / name, title=title)
            curves[name] = fit
    return curves


def export_step(backbone: Any, heads: Heads, calibration: Calibration, split: list[SplitRecord],
                out: Path) -> Exported:
    """The calibrated serving graph as model.onnx, checked against Keras on real images, its weights
    stored at float16 when float32 leaves no room for a gate under the size limit."""
    from training.export import (
        MAX_MODEL_BYTES, build_export_model, parity, parity_sample, store_half_precision, to_onnx)
    from training.gate import gate_bytes

    kl_kernel, kl_bias = (None, None) if heads.kl_head is None else (heads.kl_head.kernel, heads.kl_head.bias)
    export_model = build_export_model(backbone, heads.head.kernel, heads.head.bias, kl_kernel, kl_bias,
                                      temperature=calibration.temperature,
                                      kl_temperature=calibration.kl_temperature)
    # Written at float32 whatever its size, checked against Keras, then stored at float16 if too big.
    onnx_path = to_onnx(export_model, out / "model.onnx", max_bytes=None)
    parity_paths = parity_sample([s.record.path for s in split if s.split == "val"],
                                 [s.record.path for s in split if s.split == "train"])
    _, height, width, _ = backbone.input_shape
    parity_images = np.stack([load_image(p, size=(width, height)) for p in parity_paths])
    differences = parity(export_model, onnx_path, parity_images)
    log.info("parity on %d real images (validation first): %s", len(parity_paths), differences)
    # Room for the gate training.gate adds afterwards, whichever method it chooses: its Mahalanobis
    # gate keeps a mean per label of the split (knees: per KL grade, not per head class)
    width = heads.head.kernel.shape[0]
    labels = len({s.record.label for s in split})
    storage = store_half_precision(onnx_path, parity_images, MAX_MODEL_BYTES - gate_bytes(width, labels))
    log.info("weights stored as %s", json.dumps(storage))
    return Exported(export_model, onnx_path, differences, len(parity_paths), storage)


def evaluate_step(task: str, split: list[SplitRecord], onnx_path: Path, calibration: Calibration) -> dict:
    """Held-out test metrics from the exported, calibrated model's own outputs; the test rows'
    calibration figures join `calibration.report`."""
    test_records = [s.record for s in split if s.split == "test"]
    test_outputs = run_onnx(onnx_path, [r.path for r in test_records], outputs_for(task, test_records))
    test = score_outputs(task, test_records, test_outputs, intervals=True)
    log.info("held-out test: %s", json.dumps(test))
    keep, y_test = binary_targets(task, test_records)
    report = calibration.report
    report["probabilities"]["test"] = temperature_report(
        logits_of_calibrated(test_outputs["probabilities"][keep], calibration.temperature), y_test,
        calibration.temperature)
    if "kl_probabilities" in report:
        report["kl_probabilities"]["test"] = temperature_report(
            logits_of_calibrated(test_outputs["kl_probabilities"], calibration.kl_temperature),
            np.array([int(r.label) for r in test_records]), calibration.kl_temperature)
    log.info("calibration: %s", json.dumps(report))
    return test


def card_step(args: argparse.Namespace, argv: list[str], root: Path, out: Path, split: list[SplitRecord],
              heads: Heads, calibration: Calibration, exported: Exported, test: dict,
              curves: dict[str, str], timing: dict) -> None:
    """card.json + card.md; with --tta, then the test-time-augmented model and its card."""
    from training.export import onnx_interface

    task, onnx_path = args.task, exported.onnx_path
    card = model_card.build(
        task=task, split=split, validation=heads.validation, test=test, heads=heads.info,
        finetune=heads.finetune_info, parameters=int(exported.model.count_params()),
        timing=timing, augmentation=args.augment, parity=exported.parity, parity_images=exported.parity_images,
        interface=onnx_interface(onnx_path), model_bytes=onnx_path.stat().st_size,
        data_root=root, calibration=calibration.report, curves=curves, mura=uses_mura(task, root),
        storage=exported.storage,
    )
    # With --tta this card is the one-view model's, kept inside the final card under its own version.
    card["version"] = f"{args.version}+one-view" if args.tta else args.version
    model_card.write(card, out)
    if args.tta:
        tta.apply(task, out, root, args.version, command=shlex.join(["python", "-m", "training.train", *argv]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg == "--arch" or arg.startswith("--arch=") for arg in argv):
        # One of the original's architectures (or ours) trained end to end: its own pipeline.
        from training.experiments import arch_training

        return arch_training.main(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import keras

    keras.utils.set_random_seed(SEED)
    task = args.task
    root = data_dir(args.data)
    out = args.out or SPECS[task].model_dir
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # Knee data carries KL grades (a second, KL head); MURA is normal/abnormal only.
    has_kl = TRAINING[task].kl_grades and not uses_mura(task, root)

    split = split_step(task, root, out)
    backbone, rows, end_to_end_head, finetune_info = features_step(args, split, root)
    heads = heads_step(args, backbone, rows, end_to_end_head, finetune_info, has_kl)
    calibration = calibrate_step(heads, rows.is_train)
    curves = curves_step(heads, args.backbone_weights, out)
    # Extraction time is stored with the cached features, so a rerun still reports it.
    seconds = rows.features.seconds
    timing = {"feature_extraction_seconds": None if seconds is None else round(seconds, 1),
              "split_finetune_and_heads_seconds": round(time.monotonic() - started, 1)}
    exported = export_step(backbone, heads, calibration, split, out)
    test = evaluate_step(task, split, exported.onnx_path, calibration)
    card_step(args, argv, root, out, split, heads, calibration, exported, test, curves, timing)
    onnx_path = exported.onnx_path
    log.info("wrote %s (%s bytes) and card to %s", onnx_path, onnx_path.stat().st_size,
             out.resolve().relative_to(PROJECT_ROOT) if out.resolve().is_relative_to(PROJECT_ROOT) else out)
    return 0


if __name__ == "__main__":
    from training.cli import run

    raise SystemExit(run(main))
