"""Dataset readers: each dataset's own published layout -> (path, label, group) records."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.datasets import (
    DatasetLayoutError, kermany_patient_id, knee_patient_id, read_ham10000, read_kermany, read_knee_kl,
)


def _image(path: Path, seed: int = 0, size: tuple[int, int] = (32, 32), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8).squeeze()
    Image.fromarray(pixels, mode).save(path)
    return path


def _kermany_tree(root: Path) -> None:
    for name in ("IM-0115-0001.jpeg", "IM-0115-0002.jpeg", "NORMAL2-IM-0027-0001.jpeg"):
        _image(root / "chest_xray" / "train" / "NORMAL" / name, mode="L")
    for name in ("person12_bacteria_3.jpeg", "person12_virus_44.jpeg", "person7_virus_1_2.jpeg"):
        _image(root / "chest_xray" / "train" / "PNEUMONIA" / name, mode="L")


def test_kermany_records_carry_label_and_patient_id(tmp_path):
    _kermany_tree(tmp_path)

    records = read_kermany(tmp_path, "train")

    found = {(r.path.name, r.label, r.group) for r in records}
    assert found == {
        ("IM-0115-0001.jpeg", "NORMAL", "IM-0115"),
        ("IM-0115-0002.jpeg", "NORMAL", "IM-0115"),
        ("NORMAL2-IM-0027-0001.jpeg", "NORMAL", "NORMAL2-IM-0027"),
        ("person12_bacteria_3.jpeg", "PNEUMONIA", "person12"),
        ("person12_virus_44.jpeg", "PNEUMONIA", "person12"),
        ("person7_virus_1_2.jpeg", "PNEUMONIA", "person7"),
    }
    assert all(r.path.is_file() for r in records)


def test_kermany_accepts_the_chest_xray_folder_itself(tmp_path):
    _kermany_tree(tmp_path)

    assert len(read_kermany(tmp_path / "chest_xray", "train")) == 6


def test_kermany_missing_class_folder_is_named(tmp_path):
    _image(tmp_path / "chest_xray" / "test" / "NORMAL" / "IM-0001-0001.jpeg")

    with pytest.raises(DatasetLayoutError, match="PNEUMONIA"):
        read_kermany(tmp_path, "test")


def test_training_on_a_dataset_with_an_empty_class_folder_is_refused(tmp_path):
    """An incomplete download must not train a model that has never seen a class."""
    from training.tasks import load_split

    for name in ("IM-0115-0001.jpeg", "IM-0116-0001.jpeg"):
        _image(tmp_path / "chest_xray" / "train" / "NORMAL" / name, mode="L")
    (tmp_path / "chest_xray" / "train" / "PNEUMONIA").mkdir()
    assert len(read_kermany(tmp_path, "train")) == 2          # evaluating such a folder is allowed
    with pytest.raises(DatasetLayoutError, match="Kermany train: no images of PNEUMONIA"):
        load_split("pneumonia", tmp_path)


def test_kermany_missing_split_and_unknown_label_are_clear(tmp_path):
    _kermany_tree(tmp_path)
    with pytest.raises(DatasetLayoutError, match="'val' split.*not found"):
        read_kermany(tmp_path, "val")

    _image(tmp_path / "chest_xray" / "train" / "COVID" / "IM-0001-0001.jpeg")
    with pytest.raises(DatasetLayoutError, match="unknown Kermany label.*COVID"):
        read_kermany(tmp_path, "train")


def test_kermany_file_name_without_patient_id_is_rejected():
    assert kermany_patient_id("person1000_bacteria_2931.jpeg") == "person1000"
    with pytest.raises(DatasetLayoutError, match="scan.jpeg"):
        kermany_patient_id("scan.jpeg")


def _ham_tree(root: Path, rows: list[tuple[str, str, str]], folders: dict[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "HAM10000_metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"])
        for lesion, image, dx in rows:
            writer.writerow([lesion, image, dx, "histo", "50.0", "male", "back"])
    for image, folder in folders.items():
        _image(root / folder / f"{image}.jpg", size=(40, 30))


def test_ham10000_reads_both_image_folder_layouts(tmp_path):
    rows = [("HAM_1", "ISIC_1", "mel"), ("HAM_1", "ISIC_2", "mel"), ("HAM_2", "ISIC_3", "nv")]
    _ham_tree(tmp_path / "split", rows, {"ISIC_1": "HAM10000_images_part_1", "ISIC_2": "HAM10000_images_part_2",
                                         "ISIC_3": "HAM10000_images_part_2"})
    _ham_tree(tmp_path / "one", rows, {"ISIC_1": "HAM10000_images", "ISIC_2": "HAM10000_images",
                                       "ISIC_3": "HAM10000_images"})

    for folder in ("split", "one"):
        records = read_ham10000(tmp_path / folder)
        assert [(r.path.stem, r.label, r.group) for r in records] == [
            ("ISIC_1", "mel", "HAM_1"), ("ISIC_2", "mel", "HAM_1"), ("ISIC_3", "nv", "HAM_2")]


def test_ham10000_bad_layouts_say_what_is_wrong(tmp_path):
    with pytest.raises(DatasetLayoutError, match="HAM10000_metadata.csv"):
        read_ham10000(tmp_path)

    _ham_tree(tmp_path / "noimages", [("HAM_1", "ISIC_1", "mel")], {})
    with pytest.raises(DatasetLayoutError, match="no HAM10000 image folder"):
        read_ham10000(tmp_path / "noimages")

    _ham_tree(tmp_path / "missing", [("HAM_1", "ISIC_1", "mel"), ("HAM_2", "ISIC_9", "nv")],
              {"ISIC_1": "HAM10000_images"})
    with pytest.raises(DatasetLayoutError, match="ISIC_9"):
        read_ham10000(tmp_path / "missing")

    _ham_tree(tmp_path / "label", [("HAM_1", "ISIC_1", "wart")], {"ISIC_1": "HAM10000_images"})
    with pytest.raises(DatasetLayoutError, match="unknown HAM10000 dx 'wart'"):
        read_ham10000(tmp_path / "label")


def test_ham10000_with_only_one_half_of_its_images_names_the_missing_folder(tmp_path):
    _ham_tree(tmp_path, [("HAM_1", "ISIC_1", "mel"), ("HAM_2", "ISIC_2", "nv")],
              {"ISIC_1": "HAM10000_images_part_1"})
    with pytest.raises(DatasetLayoutError, match="ISIC_2 .*HAM10000_images_part_2, is missing"):
        read_ham10000(tmp_path)


def test_ham10000_image_listed_twice_or_without_a_lesion_is_refused(tmp_path):
    # Either would defeat the lesion-disjoint split: one file in two splits, or unrelated images pooled.
    folders = {"ISIC_1": "HAM10000_images", "ISIC_2": "HAM10000_images"}
    _ham_tree(tmp_path / "twice", [("HAM_1", "ISIC_1", "mel"), ("HAM_2", "ISIC_1", "mel")], folders)
    with pytest.raises(DatasetLayoutError, match="ISIC_1 is listed twice"):
        read_ham10000(tmp_path / "twice")

    _ham_tree(tmp_path / "blank", [("HAM_1", "ISIC_1", "mel"), ("", "ISIC_2", "nv")], folders)
    with pytest.raises(DatasetLayoutError, match=r"HAM10000_metadata.csv:3: image ISIC_2 has no lesion_id"):
        read_ham10000(tmp_path / "blank")


def test_ham10000_metadata_saved_with_a_byte_order_mark_reads(tmp_path):
    _ham_tree(tmp_path, [("HAM_1", "ISIC_1", "mel")], {"ISIC_1": "HAM10000_images"})
    csv_path = tmp_path / "HAM10000_metadata.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())     # as Excel's "CSV UTF-8" saves it

    assert [(r.label, r.group) for r in read_ham10000(tmp_path)] == [("mel", "HAM_1")]


def test_knee_records_carry_grade_and_patient(tmp_path):
    _image(tmp_path / "knee_kl" / "train" / "0" / "9001695L.jpg", mode="L")
    _image(tmp_path / "knee_kl" / "train" / "2" / "9001695R.jpg", mode="L")
    _image(tmp_path / "knee_kl" / "train" / "4" / "9003126L.jpg", mode="L")
    for grade in ("1", "3"):
        (tmp_path / "knee_kl" / "train" / grade).mkdir(parents=True)

    records = read_knee_kl(tmp_path, "train")

    assert [(r.path.name, r.label, r.group) for r in records] == [
        ("9001695L.jpg", "0", "9001695"), ("9001695R.jpg", "2", "9001695"), ("9003126L.jpg", "4", "9003126")]


def test_the_knee_release_unpacked_as_is_reads_too(tmp_path):
    """Chen's release unpacks as kneeKL224/{train,val,test}/{0..4}: a root holding the split
    folders directly is read without renaming it knee_kl."""
    release = tmp_path / "kneeKL224"
    for grade in "01234":
        (release / "test" / grade).mkdir(parents=True)
    _image(release / "test" / "3" / "9001695L.jpg", mode="L")

    assert [(r.label, r.group) for r in read_knee_kl(release, "test")] == [("3", "9001695")]


def test_knee_bad_layouts_are_clear(tmp_path):
    with pytest.raises(DatasetLayoutError, match="knee KL 'val' split"):
        read_knee_kl(tmp_path, "val")
    for grade in "01234":
        (tmp_path / "knee_kl" / "val" / grade).mkdir(parents=True)
    _image(tmp_path / "knee_kl" / "val" / "5" / "1L.jpg")
    with pytest.raises(DatasetLayoutError, match="unknown KL grade.*'5'"):
        read_knee_kl(tmp_path, "val")
    with pytest.raises(DatasetLayoutError, match="knee.jpg"):
        knee_patient_id("knee.jpg")




def test_hidden_files_and_folders_a_mac_or_a_notebook_leaves_are_not_images(tmp_path):
    """macOS tar and Finder copies put an AppleDouble `._<name>.jpeg` beside each image: an image
    suffix, no patient id. Read as an image it stopped a whole evaluation."""
    _kermany_tree(tmp_path)
    _image(tmp_path / "knee_kl" / "test" / "2" / "9001695L.jpg", mode="L")
    for grade in "0134":
        (tmp_path / "knee_kl" / "test" / grade).mkdir(parents=True)
    for folder in (tmp_path / "chest_xray" / "train" / "NORMAL", tmp_path / "knee_kl" / "test" / "2"):
        (folder / "._IM-0343-0001.jpeg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        (folder / ".DS_Store").write_bytes(b"\x00")
    (tmp_path / "chest_xray" / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "knee_kl" / "test" / ".ipynb_checkpoints").mkdir()

    assert len(read_kermany(tmp_path, "train")) == 6
    assert [(r.label, r.group) for r in read_knee_kl(tmp_path, "test")] == [("2", "9001695")]


def test_ham10000_rows_without_images_are_an_error_unless_only_the_listed_are_read(tmp_path):
    """A held-out part of the lesions may come with the release's whole metadata file: evaluation reads
    the rows whose images are there; training, which must see the whole release, refuses."""
    _ham_tree(tmp_path, [("HAM_1", "ISIC_1", "mel"), ("HAM_2", "ISIC_9", "nv"), ("HAM_3", "ISIC_3", "bcc")],
              {"ISIC_1": "HAM10000_images", "ISIC_3": "HAM10000_images"})
    with pytest.raises(DatasetLayoutError, match="ISIC_9"):
        read_ham10000(tmp_path)

    assert [r.path.stem for r in read_ham10000(tmp_path, listed_only=True)] == ["ISIC_1", "ISIC_3"]
    (tmp_path / "HAM10000_images" / "ISIC_1.jpg").unlink()
    (tmp_path / "HAM10000_images" / "ISIC_3.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="none of the images"):
        read_ham10000(tmp_path, listed_only=True)
