"""Group splits: no patient/lesion in two splits, stratified by label, reproducible from the seed."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from training.datasets import Record
from training.splits import (
    SplitRecord, assert_no_group_leakage, assert_trained_on_split, id_range_split, read_split_csv, train_val_split_with_given_test, train_val_test_split,
    write_split_csv,
)


def _records(n_groups: int = 400, root: Path = Path("/data")) -> list[Record]:
    """Groups of 1-3 images; labels imbalanced 70/20/10, one label per group."""
    records = []
    for g in range(n_groups):
        label = "a" if g % 10 < 7 else ("b" if g % 10 < 9 else "c")
        for i in range(1 + g % 3):
            records.append(Record(root / f"g{g}_{i}.jpg", label, f"g{g}"))
    return records


def test_no_group_is_in_two_splits_and_sizes_are_70_15_15():
    records = _records()

    split = train_val_test_split(records)

    split_of_group: dict[str, set[str]] = {}
    for item in split:
        split_of_group.setdefault(item.record.group, set()).add(item.split)
    assert all(len(splits) == 1 for splits in split_of_group.values())
    sizes = Counter(item.split for item in split)
    assert sum(sizes.values()) == len(records)
    assert sizes["train"] / len(records) == pytest.approx(0.70, abs=0.04)
    assert sizes["val"] / len(records) == pytest.approx(0.15, abs=0.03)
    assert sizes["test"] / len(records) == pytest.approx(0.15, abs=0.03)


def test_every_split_keeps_the_label_proportions():
    records = _records()
    overall = Counter(r.label for r in records)

    split = train_val_test_split(records)

    for name in ("train", "val", "test"):
        labels = Counter(item.record.label for item in split if item.split == name)
        total = sum(labels.values())
        for label, count in overall.items():
            assert labels[label] / total == pytest.approx(count / len(records), abs=0.05), (name, label)


def test_same_seed_same_split_other_seed_other_split():
    records = _records()

    first = [s.split for s in train_val_test_split(records, seed=1)]
    again = [s.split for s in train_val_test_split(records, seed=1)]
    other = [s.split for s in train_val_test_split(records, seed=2)]

    assert first == again
    assert first != other


def test_given_test_folder_stays_test_and_train_is_split_by_group():
    train = _records(200)
    test = [Record(Path(f"/data/t{i}.jpg"), "a", f"t{i}") for i in range(20)]

    split = train_val_split_with_given_test(train, test)

    assert [s.split for s in split if s.record in test] == ["test"] * 20
    assert {s.split for s in split if s.record in train} == {"train", "val"}


def test_leakage_is_detected():
    leaked = [SplitRecord(Record(Path("/x/1.jpg"), "a", "p1"), "train"),
              SplitRecord(Record(Path("/x/2.jpg"), "a", "p1"), "test")]

    with pytest.raises(ValueError, match="'p1' is in both 'train' and 'test'"):
        assert_no_group_leakage(leaked)


def test_one_image_in_two_splits_is_detected_even_under_two_groups():
    leaked = [SplitRecord(Record(Path("/x/1.jpg"), "a", "p1"), "train"),
              SplitRecord(Record(Path("/x/1.jpg"), "a", "p2"), "test")]

    with pytest.raises(ValueError, match="image /x/1.jpg is in both 'train' and 'test'"):
        assert_no_group_leakage(leaked)


def test_given_test_patient_also_in_train_is_refused():
    train = _records(40)
    test = [Record(Path("/data/other.jpg"), "a", "g0")]

    with pytest.raises(ValueError, match="'g0'"):
        train_val_split_with_given_test(train, test)


def test_split_csv_holds_relative_paths_only(tmp_path):
    records = _records(40, root=tmp_path / "data" / "images")
    split = train_val_test_split(records)

    write_split_csv(split, tmp_path / "model" / "split.csv", tmp_path / "data")

    with (tmp_path / "model" / "split.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(records)
    assert rows[0].keys() == {"path", "label", "group", "split"}
    assert all(row["path"].startswith("images/g") for row in rows)


def test_a_dataset_folder_that_is_a_symbolic_link_is_written_relative_to_the_root(tmp_path):
    (tmp_path / "disk" / "images").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "images").symlink_to(tmp_path / "disk" / "images")
    split = train_val_test_split(_records(40, root=tmp_path / "data" / "images"))

    write_split_csv(split, tmp_path / "split.csv", tmp_path / "data")

    assert [s.record.path for s in read_split_csv(tmp_path / "split.csv", tmp_path / "data")] == \
        [s.record.path for s in split]


def test_a_written_split_csv_reads_back_as_the_same_split_under_another_root(tmp_path):
    split = train_val_test_split(_records(40, root=tmp_path / "data" / "images"))
    write_split_csv(split, tmp_path / "split.csv", tmp_path / "data")

    read = read_split_csv(tmp_path / "split.csv", tmp_path / "elsewhere")

    assert [(s.record.label, s.record.group, s.split) for s in read] == \
        [(s.record.label, s.record.group, s.split) for s in split]
    assert read[0].record.path == tmp_path / "elsewhere" / "images" / split[0].record.path.name


def test_a_csv_without_the_split_columns_is_refused(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\na.jpg,nv\n")
    with pytest.raises(ValueError, match="not a split.csv: no column group, split"):
        read_split_csv(tmp_path / "labels.csv", tmp_path)


def test_a_split_csv_row_in_an_unknown_split_is_refused(tmp_path):
    (tmp_path / "split.csv").write_text("path,label,group,split\nimages/a.jpg,nv,L1,Train\n")
    with pytest.raises(ValueError, match="line 2: split 'Train' is not one of"):
        read_split_csv(tmp_path / "split.csv", tmp_path)


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.jpg", "images/../../outside.jpg", ""])
def test_a_split_csv_path_outside_the_data_root_is_refused(tmp_path, bad):
    (tmp_path / "split.csv").write_text(f"path,label,group,split\nimages/a.jpg,nv,L1,train\n{bad},nv,L2,val\n")
    with pytest.raises(ValueError, match="line 3: .* is not a path inside the data root"):
        read_split_csv(tmp_path / "split.csv", tmp_path)


def test_a_backbone_is_scored_only_on_the_split_it_was_trained_on(tmp_path):
    root = tmp_path / "data"
    split = train_val_test_split(_records(40, root=root))
    run = tmp_path / "run"
    write_split_csv(split, run / "split.csv", root)
    assert_trained_on_split(run / "split.csv", split, root)      # the same rows: fine

    # The run chose its epoch on an image this split trains on, or trained on a test image
    for moved_from, moved_to in (("val", "train"), ("test", "train")):
        index = next(i for i, item in enumerate(split) if item.split == moved_from)
        other = [*split[:index], SplitRecord(split[index].record, moved_to), *split[index + 1:]]
        write_split_csv(other, run / "split.csv", root)
        with pytest.raises(ValueError, match="differ from this split's in 1 images"):
            assert_trained_on_split(run / "split.csv", split, root)

    (run / "split.csv").unlink()
    with pytest.raises(FileNotFoundError, match="split cannot be checked"):
        assert_trained_on_split(run / "split.csv", split, root)


def _kermany_like(root: Path = Path("/data")) -> list[Record]:
    """Three file-name families numbered independently, 1-2 images a patient, as Kermany's train folder."""
    records = []
    for family, label, n in (("IM-", "NORMAL", 120), ("NORMAL2-IM-", "NORMAL", 150), ("person", "PNEUMONIA", 400)):
        for number in range(100, 100 + n):
            for image in range(1 + number % 2):
                records.append(Record(root / f"{family}{number:04d}-{image}.jpeg", label, f"{family}{number:04d}"))
    return records


def test_the_shift_validation_holds_out_the_lowest_patient_ids_of_each_family_without_leakage():
    records = _kermany_like()

    split = id_range_split(records)

    assert_no_group_leakage(split)
    assert len(split) == len(records)
    for family in ("IM-", "NORMAL2-IM-", "person"):
        mine = [s for s in split if s.record.group.startswith(family) and not
                (family == "IM-" and s.record.group.startswith("NORMAL2"))]
        number = {s.record.group: int(s.record.group[len(family):]) for s in mine}
        held = [number[s.record.group] for s in mine if s.split == "val"]
        kept = [number[s.record.group] for s in mine if s.split != "val"]
        assert max(held) < min(kept)                                  # a contiguous lowest range
        assert 0.15 <= len(held) / len(mine) < 0.20                   # at least 15% of the family's images
    sizes = Counter(s.split for s in split)
    assert sizes["test"] / len(records) == pytest.approx(0.15, abs=0.03)


def test_the_shift_split_is_reproducible_and_refuses_an_unnumbered_group():
    records = _kermany_like()
    assert id_range_split(records) == id_range_split(records)
    assert id_range_split(records) != id_range_split(records, seed=1)
    with pytest.raises(ValueError, match="no trailing number"):
        id_range_split([*records, Record(Path("/data/x.jpeg"), "NORMAL", "anonymous")])
