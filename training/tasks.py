"""What each task trains on: its records, split, and how dataset labels map to model labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.bone.spec import SPEC as BONE
from services.core.spec import TaskSpec
from services.pneumonia.spec import SPEC as PNEUMONIA
from services.skin.spec import SPEC as SKIN
from training import datasets, mura
from training.metrics import binary_metrics, multiclass_metrics
from training.splits import SplitRecord, id_range_split, train_val_split_with_given_test, train_val_test_split

SPECS: dict[str, TaskSpec] = {"bone": BONE, "skin": SKIN, "pneumonia": PNEUMONIA}


@dataclass(frozen=True)
class TaskData:
    source: str
    licence: str
    split_method: str


TASK_DATA = {
    "pneumonia": TaskData(
        source="Kermany pediatric chest X-rays, original train split (Guangzhou Women and Children's "
        "Medical Center), Mendeley Data doi:10.17632/rscbjbr9sj.2",
        licence="CC BY 4.0 (Kermany, Zhang, Goldbaum 2018)",
        split_method="held-out patient-id ranges for validation (training.splits.id_range_split): the lowest "
        "patient ids of each file-name family (IM-, NORMAL2-IM-, person), at least 15% of each family's images, "
        "an acquisition period never trained on (Kermany's own test folder holds lower normal ids still); the "
        "other patients split by StratifiedGroupKFold (shuffled, seeded) into test (3/20 of all images: the "
        "in-distribution figures) and train, all in the Kermany train folder",
    ),
    "skin": TaskData(
        source="HAM10000 dermatoscopic images (downsized 3x to 200x150), Harvard Dataverse doi:10.7910/DVN/DBW86T",
        licence="CC BY-NC 4.0, non-commercial (Tschandl, Rosendahl, Kittler 2018, Sci Data 5:180161)",
        split_method="StratifiedGroupKFold(20 folds, shuffled, seeded) by lesion_id: "
        "14 folds train / 3 val / 3 test (~70/15/15)",
    ),
    "bone": TaskData(
        source="Knee radiographs from the Osteoarthritis Initiative, Kellgren-Lawrence graded "
        "(Chen 2018), Mendeley Data doi:10.17632/56rmx5bjcr.1",
        licence="CC BY 4.0 (Chen P. 2018); images from the OAI",
        split_method="given knee_kl/train split by OAI patient id with StratifiedGroupKFold(20 folds, shuffled, "
        "seeded) on KL grade: 17 folds train / 3 val (~85/15); the given knee_kl/val folder "
        "(patient-disjoint) is the held-out test",
    ),
}


MURA_DATA = TaskData(
    source="MURA v1.1 upper-limb radiographs (Stanford ML Group; Rajpurkar et al. 2017), "
    "labelled normal/abnormal per study",
    licence="Stanford MURA research use agreement (no redistribution)",
    split_method="given MURA train split by patient with StratifiedGroupKFold(20 folds, shuffled, seeded): "
    "17 folds train / 3 val (~85/15); MURA's own valid split (patient-disjoint) is the held-out test",
)


def uses_mura(task: str, data_root: Path) -> bool:
    """Bone trains on MURA (normal/abnormal per view, no KL grade) when `data_root` is or holds `MURA-v1.1`."""
    data_root = Path(data_root)
    return task == "bone" and (data_root.name == "MURA-v1.1" or (data_root / "MURA-v1.1").is_dir())


def task_data(task: str, data_root: Path) -> TaskData:
    """What `load_split(task, data_root)` reads, for the model card."""
    return MURA_DATA if uses_mura(task, data_root) else TASK_DATA[task]


def load_split(task: str, data_root: Path) -> list[SplitRecord]:
    """The task's records split by group (patient or lesion) into train / val / test.

    Bone: MURA when `data_root/MURA-v1.1` exists (its train split -> train/val by patient, its
    valid split -> test), else the knee KL data.
    """
    if task not in TRAINING:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(SPECS)}")
    return TRAINING[task].load_split(Path(data_root))


def _with_every_label(records: list[datasets.Record], labels: Sequence[str],
                      what: str) -> list[datasets.Record]:
    """The records, when every class has images to train on: an empty class folder is an incomplete
    download, and a model trained without a class would still print figures."""
    missing = [label for label in labels if not any(r.label == label for r in records)]
    if missing:
        raise datasets.DatasetLayoutError(f"{what}: no images of {', '.join(missing)}; every class is needed "
                                          "to train")
    return records


def binary_bone_label(kl_grade: str) -> int | None:
    """KL0 -> NORMAL (0), KL>=2 -> ABNORMAL (1); KL1 ('doubtful') has no binary label."""
    if kl_grade not in datasets.KL_GRADES:
        raise ValueError(f"unknown bone label {kl_grade!r}: expected a KL grade {datasets.KL_GRADES} "
                         f"or one of {datasets.MURA_LABELS}")
    grade = int(kl_grade)
    if grade == 1:
        return None
    return 0 if grade == 0 else 1


def label_index(task: str, label: str) -> int | None:
    """Index into SPECS[task].labels for a dataset label (None: excluded from the binary head).

    Bone labels are KL grades "0".."4" (knee data) or MURA's NORMAL / ABNORMAL.
    """
    if task == "bone" and label in datasets.MURA_LABELS:
        return datasets.MURA_LABELS.index(label)
    if task == "bone":
        return binary_bone_label(label)
    return SPECS[task].label_codes.index(label)


def _pneumonia_split(data_root: Path) -> list[SplitRecord]:
    kermany = datasets.read_kermany(data_root, "train")
    return id_range_split(_with_every_label(kermany, datasets.KERMANY_LABELS, "Kermany train"))


def _skin_split(data_root: Path) -> list[SplitRecord]:
    return train_val_test_split(
        _with_every_label(datasets.read_ham10000(data_root), datasets.HAM10000_LABELS, "HAM10000"))


def _bone_split(data_root: Path) -> list[SplitRecord]:
    if uses_mura("bone", data_root):
        return train_val_split_with_given_test(
            _with_every_label(mura.as_records(mura.read_mura_images(data_root, "train")), datasets.MURA_LABELS,
                              "MURA train"),
            mura.as_records(mura.read_mura_images(data_root, "valid")),
        )
    return train_val_split_with_given_test(
        _with_every_label(datasets.read_knee_kl(data_root, "train"), datasets.KL_GRADES, "knee KL train"),
        datasets.read_knee_kl(data_root, "val"),
    )


@dataclass(frozen=True)
class TrainingTask:
    """How one task trains, beside its serving spec (SPECS)."""
    load_split: Callable[[Path], list[SplitRecord]]   # its records split by group (see load_split)
    metric_set: Callable[[], dict]                     # what its `probabilities` head is scored on
    # Labelled with Kellgren-Lawrence grades (knee data): fine-tuned on the exact grade, with a
    # second, KL head beside the binary one.
    kl_grades: bool = False


TRAINING: dict[str, TrainingTask] = {
    "pneumonia": TrainingTask(_pneumonia_split, binary_metrics),
    # Balanced accuracy weighs the seven classes equally; melanoma is the one to not miss.
    "skin": TrainingTask(_skin_split, lambda: multiclass_metrics(SKIN.label_codes, sensitivity_of="mel")),
    "bone": TrainingTask(_bone_split, binary_metrics, kl_grades=True),
}
