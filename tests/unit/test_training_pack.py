"""training.experiments.pack: one stored zip with the train/val images of a split (and optionally
the weights), laid out so that training.finetune --split-csv reads it after unzipping."""

from __future__ import annotations

import zipfile

import pytest

from training.experiments import pack
from training.datasets import Record
from training.splits import SplitRecord, read_split_csv, write_split_csv


def _data(root):
    split = []
    for part, names in (("train", "ab"), ("val", "c"), ("test", "d")):
        for name in names:
            path = root / "ham10000" / "HAM10000_images" / f"{name}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(name.encode() * 100)
            split.append(SplitRecord(Record(path, "nv", f"L{name}"), part))
    write_split_csv(split, root / "split.csv", root)
    weights = root / "weights"
    weights.mkdir()
    (weights / "Conv_weights.npy").write_bytes(b"w" * 10)
    return root / "split.csv", weights


def test_the_pack_holds_the_train_and_val_images_under_their_data_paths_and_the_weights(tmp_path):
    split_csv, weights = _data(tmp_path / "data")
    out = tmp_path / "out" / "skin.zip"

    size = pack.write_pack(pack.files_to_pack([split_csv], tmp_path / "data", ["train", "val"], weights), out)

    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == ["ham10000/HAM10000_images/a.jpg", "ham10000/HAM10000_images/b.jpg",
                                              "ham10000/HAM10000_images/c.jpg", "weights/Conv_weights.npy"]
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        archive.extractall(tmp_path / "there")
    assert size == out.stat().st_size
    rows = [s for s in read_split_csv(split_csv, tmp_path / "there") if s.split != "test"]
    assert len(rows) == 3
    assert all(s.record.path.read_bytes() == s.record.path.stem.encode() * 100 for s in rows)


def test_a_missing_image_is_named(tmp_path):
    split_csv, _ = _data(tmp_path / "data")
    (tmp_path / "data" / "ham10000" / "HAM10000_images" / "c.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 images of the split .*/c\.jpg"):
        pack.files_to_pack([split_csv], tmp_path / "data", ["train", "val"], None)


def test_a_pack_over_the_limit_is_refused_before_writing(tmp_path, capsys):
    split_csv, _ = _data(tmp_path / "data")
    out = tmp_path / "skin.zip"
    code = pack.main(["--split-csv", str(split_csv), "--data", str(tmp_path / "data"), "--out", str(out),
                      "--max-mib", "0"])
    assert code == 2 and not out.exists()
    assert "over the 0.0 MiB allowed" in capsys.readouterr().err


def test_parts_hold_every_file_once_and_about_as_many_files_each(tmp_path):
    split_csv, weights = _data(tmp_path / "data")
    files = pack.files_to_pack([split_csv], tmp_path / "data", ["train", "val", "test"], weights)
    parts = [pack.part_of(files, k, 2) for k in (1, 2)]
    assert sorted([*parts[0], *parts[1]]) == sorted(files) and not set(parts[0]) & set(parts[1])
    assert abs(len(parts[0]) - len(parts[1])) <= 1
    with pytest.raises(ValueError, match="part 3/2"):
        pack.part_of(files, 3, 2)
