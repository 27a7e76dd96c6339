"""How two pneumonia models hold up when the same chest films look as if taken elsewhere.

    python -m training.experiments.acquisition_shift --old OLD.onnx --old-split OLD_split.csv \
        [--new services/pneumonia/model/model.onnx] [--new-split services/pneumonia/model/split.csv] [--mean]
        [--zoom-views]

Scores both models on the images neither trained nor validated on (the old split's test rows that
are validation or test rows of the new split, so no image either model learnt from), each image
decoded as serving decodes it and then changed the way another site's exposure and processing
would change it: gamma, contrast, brightness, blur, a lower resolution, JPEG compression, noise.
With `--mean`, also the two models' probabilities averaged (an ensemble of them). With
`--zoom-views`, also the new model averaged over the image and its central 90% and 80% (test-time
augmentation for chest films: no flip or turn applies, a slightly different framing does).
Prints one JSON object: per model and perturbation, accuracy, sensitivity, specificity and AUC.
Kermany's own test folder (not in ../shared/data) is the real test of this; these perturbations are
what can be measured here.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from sklearn import metrics as skm

from services.core.imaging import ImageLimits, read_image
from services.core.preprocessing import draft_size_for, to_model_input
from training.paths import data_dir
from training.splits import read_split_csv

SIZE = (224, 224)


def _gamma(value: float) -> Callable[[Image.Image], Image.Image]:
    table = [round(255 * (i / 255) ** value) for i in range(256)] * 3
    return lambda image: image.convert("RGB").point(table)


def _noise(sigma: float) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
        noisy = pixels + np.random.default_rng(0).normal(0, sigma * 255, pixels.shape)
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).convert("RGB")
    return apply


def _jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return apply


PERTURBATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "none": lambda image: image,
    "gamma 0.6": _gamma(0.6),
    "gamma 1.6": _gamma(1.6),
    "contrast 0.7": lambda image: ImageEnhance.Contrast(image.convert("RGB")).enhance(0.7),
    "contrast 1.3": lambda image: ImageEnhance.Contrast(image.convert("RGB")).enhance(1.3),
    "brightness 0.85": lambda image: ImageEnhance.Brightness(image.convert("RGB")).enhance(0.85),
    "brightness 1.15": lambda image: ImageEnhance.Brightness(image.convert("RGB")).enhance(1.15),
    "blur 1.5 px": lambda image: image.filter(ImageFilter.GaussianBlur(1.5)),
    "resolution 0.4": lambda image: image.resize((90, 90), Image.BILINEAR).resize(image.size, Image.BILINEAR),
    "jpeg q30": _jpeg(30),
    "noise 0.04": _noise(0.04),
}
# Another site rarely differs in one way only: two compounds of the changes above.
PERTURBATIONS |= {
    "contrast 0.7 + noise 0.04 + jpeg q30":
        lambda image: PERTURBATIONS["jpeg q30"](PERTURBATIONS["noise 0.04"](PERTURBATIONS["contrast 0.7"](image))),
    "gamma 1.6 + blur 1.5 px + resolution 0.4":
        lambda image: PERTURBATIONS["resolution 0.4"](PERTURBATIONS["blur 1.5 px"](PERTURBATIONS["gamma 1.6"](image))),
}


def held_out_of_both(old_split: Path, new_split: Path, root: Path) -> list[tuple[Path, int]]:
    """(path, 1 if PNEUMONIA) of the old split's test rows that the new split holds out too."""
    new_held = {s.record.path for s in read_split_csv(new_split, root) if s.split in ("val", "test")}
    return [(s.record.path, int(s.record.label == "PNEUMONIA")) for s in read_split_csv(old_split, root)
            if s.split == "test" and s.record.path in new_held]


def scores(model: Path, images: list[Image.Image]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    batch = np.stack([to_model_input(image, SIZE) for image in images])
    return np.concatenate([session.run(["probabilities"], {"input": batch[i:i + 64]})[0][:, 1]
                           for i in range(0, len(batch), 64)])


ZOOMS = (1.0, 0.9, 0.8)


def zoom_views(image: Image.Image, fractions: tuple[float, ...] = ZOOMS) -> list[Image.Image]:
    """The image's central `fraction` of each side, for each fraction (1.0: the image itself)."""
    width, height = image.size
    views = []
    for fraction in fractions:
        w, h = round(width * fraction), round(height * fraction)
        left, top = (width - w) // 2, (height - h) // 2
        views.append(image.crop((left, top, left + w, top + h)))
    return views


def zoom_scores(model: Path, images: list[Image.Image]) -> np.ndarray:
    """`model`'s probability of pneumonia averaged over the zoom views of each image."""
    views = [zoom_views(image) for image in images]
    return np.mean([scores(model, [v[i] for v in views]) for i in range(len(ZOOMS))], axis=0)


def figures(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    predicted = (p > 0.5).astype(int)
    return {"accuracy": round(float((predicted == y).mean()), 4),
            "sensitivity": round(float(predicted[y == 1].mean()), 4),
            "specificity": round(float(1 - predicted[y == 0].mean()), 4),
            "auc": round(float(skm.roc_auc_score(y, p)), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.acquisition_shift",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--old-split", type=Path, required=True)
    parser.add_argument("--new", type=Path, default=Path("services/pneumonia/model/model.onnx"))
    parser.add_argument("--new-split", type=Path, default=Path("services/pneumonia/model/split.csv"))
    parser.add_argument("--mean", action="store_true", help="also score the mean of the two models' probabilities")
    parser.add_argument("--zoom-views", action="store_true",
                        help="also score the new model averaged over the image and its central 90%% and 80%%")
    parser.add_argument("--data")
    args = parser.parse_args(argv)
    root = data_dir(args.data)
    rows = held_out_of_both(args.old_split, args.new_split, root)
    y = np.array([label for _, label in rows])
    decoded = [read_image(path.read_bytes(), None, ImageLimits(), draft_size_for(SIZE)).image for path, _ in rows]
    result: dict = {"images": len(rows), "normal": int((y == 0).sum()), "pneumonia": int(y.sum()), "models": {}}
    changed = {label: [change(image) for image in decoded] for label, change in PERTURBATIONS.items()}
    p = {name: {label: scores(model, images) for label, images in changed.items()}
         for name, model in (("old", args.old), ("new", args.new))}
    files = {"old": str(args.old), "new": str(args.new)}
    if args.mean:   # the two models' probabilities averaged: what an ensemble of them would answer
        p["mean"] = {label: (p["old"][label] + p["new"][label]) / 2 for label in changed}
        files["mean"] = "mean of old and new"
    if args.zoom_views:
        p["new, zoom views"] = {label: zoom_scores(args.new, images) for label, images in changed.items()}
        files["new, zoom views"] = f"{args.new}, mean over central {ZOOMS}"
    for name, per_change in p.items():
        result["models"][name] = {"file": files[name], "perturbations": {
            label: figures(y, values) for label, values in per_change.items()}}
        per = result["models"][name]["perturbations"]
        result["models"][name]["worst"] = {key: min(v[key] for v in per.values())
                                           for key in ("accuracy", "sensitivity", "specificity", "auc")}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
