"""MURA v1.1 (Rajpurkar et al. 2017, "MURA: Large Dataset for Abnormality Detection in
Musculoskeletal Radiographs") in its own layout, and its study-level evaluation.

Layout (the folder holding `MURA-v1.1/`, or `MURA-v1.1/` itself):
    MURA-v1.1/{train,valid}_image_paths.csv       one image path per line, e.g.
        MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png
    MURA-v1.1/{train,valid}_labeled_studies.csv   "<study folder path>/,<0|1>" per line (1 = abnormal)
    MURA-v1.1/{train,valid}/XR_<TYPE>/patientNNNNN/studyN_{positive,negative}/imageN.png

MURA is labelled per *study* (one visit, one to several views), and the paper scores per study:
the study's probability of abnormality is the mean of its views' probabilities, thresholded at
0.5, and agreement with the radiologists' label is Cohen's kappa, per study type and overall.
No copy of MURA is available to this project (its licence forbids redistribution); this reader is
for users who have it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import cohen_kappa_score

from training.datasets import MURA_LABELS, DatasetLayoutError, Record

SPLITS = ("train", "valid")
STUDY_TYPES = ("ELBOW", "FINGER", "FOREARM", "HAND", "HUMERUS", "SHOULDER", "WRIST")
THRESHOLD = 0.5
_IMAGE_PATH = re.compile(
    r"^(?P<study>MURA-v1\.1/(?P<split>train|valid)/XR_(?P<type>[A-Z]+)/(?P<patient>patient\d+)/"
    r"study\d+_(?P<folder_label>positive|negative))/[^/]+\.png$"
)


@dataclass(frozen=True)
class MuraImage:
    path: Path          # absolute path of one view
    label: str          # "NORMAL" or "ABNORMAL" (MURA_LABELS; index 1 = abnormal)
    study_id: str       # e.g. "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive"
    patient_id: str     # e.g. "patient11185"
    study_type: str     # one of STUDY_TYPES, e.g. "WRIST"

    @property
    def y(self) -> int:
        return MURA_LABELS.index(self.label)


def _base(root: Path) -> Path:
    root = Path(root)
    base = root if root.name == "MURA-v1.1" else root / "MURA-v1.1"
    if not base.is_dir():
        raise DatasetLayoutError(f"MURA folder not found: {base}")
    return base


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise DatasetLayoutError(f"MURA file not found: {path}")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]


def read_labeled_studies(root: Path, split: str) -> dict[str, int]:
    """{study folder path, no trailing '/': 0 (normal) or 1 (abnormal)} from `<split>_labeled_studies.csv`."""
    if split not in SPLITS:
        raise ValueError(f"unknown MURA split {split!r}; expected one of {SPLITS}")
    listing = _base(root) / f"{split}_labeled_studies.csv"
    studies: dict[str, int] = {}
    for number, line in _lines(listing):
        study, _, label = line.rpartition(",")
        if label not in ("0", "1"):
            raise DatasetLayoutError(f"{listing}:{number}: unknown study label {label!r}, expected 0 or 1")
        studies[study.rstrip("/")] = int(label)
    if not studies:
        raise DatasetLayoutError(f"{listing} lists no studies")
    return studies


def read_mura_images(root: Path, split: str, check_files: bool = True) -> list[MuraImage]:
    """Every view listed in `<split>_image_paths.csv`, labelled from `<split>_labeled_studies.csv`.

    Raises DatasetLayoutError naming the file (and line) when a CSV is missing, a path is not in
    MURA's layout, a study is unlabelled or its label contradicts its folder name, a study type is
    unknown, or (with `check_files`) a listed image does not exist.
    """
    base = _base(root)
    studies = read_labeled_studies(base, split)
    listing = base / f"{split}_image_paths.csv"
    images = []
    for number, relative in _lines(listing):
        match = _IMAGE_PATH.match(relative)
        if match is None or match["split"] != split:
            raise DatasetLayoutError(
                f"{listing}:{number}: {relative!r} is not MURA-v1.1/{split}/XR_<TYPE>/patientNNNNN/"
                "studyN_{positive,negative}/imageN.png"
            )
        if match["type"] not in STUDY_TYPES:
            raise DatasetLayoutError(
                f"{listing}:{number}: unknown study type XR_{match['type']}; expected {STUDY_TYPES}"
            )
        study = match["study"]
        if study not in studies:
            raise DatasetLayoutError(
                f"{listing}:{number}: study {study} is not in {split}_labeled_studies.csv"
            )
        folder_label = 1 if match["folder_label"] == "positive" else 0
        if studies[study] != folder_label:
            raise DatasetLayoutError(
                f"study {study}: label {studies[study]} in {split}_labeled_studies.csv "
                "contradicts its folder name"
            )
        # Paths in the CSV start with "MURA-v1.1/": resolve them against the folder holding it.
        path = base.parent / relative
        if check_files and not path.is_file():
            raise DatasetLayoutError(f"{listing}:{number}: image not found: {path}")
        images.append(MuraImage(path, MURA_LABELS[folder_label], study, match["patient"], match["type"]))
    if not images:
        raise DatasetLayoutError(f"{listing} lists no images")
    return images


def as_records(images: Sequence[MuraImage]) -> list[Record]:
    """training.datasets.Record per view (group = patient), for training.splits and the pipeline."""
    return [Record(image.path, image.label, image.patient_id) for image in images]


_STUDY_OF_PATH = re.compile(
    r"(?:^|/)(?P<split>train|valid)/XR_(?P<type>[A-Z]+)/(?P<patient>patient\d+)/"
    r"(?P<study>study\d+_(?:positive|negative))/[^/]+$"
)


def is_mura_path(path: Path) -> bool:
    return _STUDY_OF_PATH.search(Path(path).as_posix()) is not None


def images_from_records(records: Sequence[Record]) -> list[MuraImage]:
    """MuraImage per record (e.g. a split.csv row), its study, patient and type read from the path."""
    images = []
    for record in records:
        match = _STUDY_OF_PATH.search(Path(record.path).as_posix())
        if match is None:
            raise DatasetLayoutError(f"not a MURA view path (.../XR_<TYPE>/patientN/studyN_<label>/...): "
                                     f"{record.path}")
        if record.label not in MURA_LABELS:
            raise DatasetLayoutError(f"unknown MURA label {record.label!r} for {record.path}")
        study_id = f"MURA-v1.1/{match['split']}/XR_{match['type']}/{match['patient']}/{match['study']}"
        images.append(MuraImage(Path(record.path), record.label, study_id, match["patient"], match["type"]))
    return images


@dataclass(frozen=True)
class StudyPrediction:
    study_id: str
    study_type: str
    patient_id: str
    y: int                  # 1 = abnormal
    probability: float      # mean P(abnormal) over the study's views
    views: int

    @property
    def predicted(self) -> int:
        return int(self.probability >= THRESHOLD)


def study_predictions(images: Sequence[MuraImage], p_abnormal: np.ndarray) -> list[StudyPrediction]:
    """Per study: the mean of its views' P(abnormal); `p_abnormal[i]` belongs to `images[i]`.

    `p_abnormal` may also be (n, 2) softmax probabilities in MURA_LABELS order (column 1 is used).
    """
    p = np.asarray(p_abnormal, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    if p.shape != (len(images),):
        raise ValueError(
            f"need one P(abnormal) per image: {len(images)} images, probabilities shape {p.shape}"
        )
    by_study: dict[str, list[int]] = {}
    for index, image in enumerate(images):
        by_study.setdefault(image.study_id, []).append(index)
    result = []
    for study_id, members in by_study.items():
        first = images[members[0]]
        result.append(StudyPrediction(study_id, first.study_type, first.patient_id, first.y,
                                      float(p[members].mean()), len(members)))
    return result


def study_kappa(studies: Sequence[StudyPrediction]) -> dict[str, float]:
    """Cohen's kappa of the thresholded study probability vs the study label, per study type and 'overall'.

    A type whose labels and predictions are all one class has an undefined kappa (NaN).
    """
    if not studies:
        raise ValueError("no studies to score")
    groups = {t: [s for s in studies if s.study_type == t] for t in sorted({s.study_type for s in studies})}
    groups["overall"] = list(studies)
    result = {}
    for name, chosen in groups.items():
        y = [s.y for s in chosen]
        predicted = [s.predicted for s in chosen]
        if len(set(y) | set(predicted)) < 2:
            result[name] = float("nan")
        else:
            result[name] = float(cohen_kappa_score(y, predicted))
    return result


def study_report(images: Sequence[MuraImage], p_abnormal: np.ndarray) -> dict[str, object]:
    """The MURA paper's study-level figures: studies, accuracy and Cohen's kappa per study type and
    overall (None where undefined), from the mean P(abnormal) over each study's views."""
    studies = study_predictions(images, p_abnormal)
    kappa = study_kappa(studies)
    return {
        "studies": len(studies),
        "study_accuracy": round(float(np.mean([s.predicted == s.y for s in studies])), 4),
        "study_kappa": {name: None if np.isnan(value) else round(value, 4) for name, value in kappa.items()},
    }
