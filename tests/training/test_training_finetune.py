"""training.finetune: end-to-end training that keeps the best validation epoch, records how it
trained, and whose weights training.train can take as its backbone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.training
keras = pytest.importorskip("keras")

from services.core.preprocessing import resized_rgb, scale  # noqa: E402
from tests.support import synthetic_image  # noqa: E402
from training import finetune  # noqa: E402
from training.datasets import Record  # noqa: E402
from training.paths import weights_dir  # noqa: E402
from training.splits import SplitRecord  # noqa: E402


def _tiny_skin_split(root: Path) -> list[SplitRecord]:
    """Two lesions of each of two classes per split; mel images are darker, so a step can learn."""
    split = []
    for part in ("train", "val"):
        for label in ("nv", "mel"):
            for index in range(3):
                path = root / f"{part}-{label}-{index}.jpg"
                image = synthetic_image("skin_lesion", (40, 30), seed=index)
                if label == "mel":
                    image = image.point(lambda v: v // 2)
                image.save(path)
                split.append(SplitRecord(Record(path, label, f"{part}{label}{index}"), part))
    return split


def _tiny_classifier(n_classes: int = 7):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x))


def _settings(**overrides) -> finetune.Settings:
    values = dict(task="skin", arch="tiny", epochs=3, batch_size=4, learning_rate=1e-2, class_weight="balanced",
                  monitor="val_balanced_accuracy", early_stopping_patience=5, max_minutes=None,
                  reduce_lr_patience=2, reduce_lr_factor=0.3, seed=1)
    return finetune.Settings(**{**values, **overrides})


def test_balanced_sample_weights_are_sklearns_class_weights():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0, 0, 0, 0, 2, 2, 5])
    expected = compute_class_weight("balanced", classes=np.array([0, 2, 5]), y=y)
    weights = finetune.sample_weights(y, 7, "balanced")
    assert weights[0] == pytest.approx(expected[0]) and weights[4] == pytest.approx(expected[1])
    assert weights[6] == pytest.approx(expected[2])
    assert (finetune.sample_weights(y, 7, "none") == 1).all()


def test_sqrt_sample_weights_are_the_square_roots_of_the_balanced_ones():
    y = np.array([0, 0, 0, 0, 2, 2, 5])
    np.testing.assert_allclose(finetune.sample_weights(y, 7, "sqrt"), np.sqrt(finetune.sample_weights(y, 7, "balanced")))
    with pytest.raises(ValueError, match="unknown class weighting 'inverse'"):
        finetune.sample_weights(y, 7, "inverse")


def test_a_split_csv_gives_its_own_rows_and_needs_only_the_train_and_val_images(tmp_path):
    from training.splits import write_split_csv

    split = _tiny_skin_split(tmp_path)
    held_out = tmp_path / "test-nv-0.jpg"      # listed as a test row, never written to disk
    split.append(SplitRecord(Record(held_out, "nv", "testnv0"), "test"))
    write_split_csv(split, tmp_path / "split.csv", tmp_path)

    read = finetune.training_split("skin", tmp_path, tmp_path / "split.csv")

    assert [(s.record.path, s.record.label, s.record.group, s.split) for s in read] == \
        [(s.record.path, s.record.label, s.record.group, s.split) for s in split]
    assert not held_out.exists()


def test_a_split_csv_of_another_task_is_refused_before_any_image_is_read(tmp_path):
    (tmp_path / "skin.csv").write_text("path,label,group,split\na.jpg,nv,L1,train\n")
    (tmp_path / "bone.csv").write_text("path,label,group,split\nknee_kl/train/2/1L.jpg,2,1,train\n")
    with pytest.raises(ValueError, match="label 'nv' is not a KL grade"):
        finetune.training_split("bone", tmp_path, tmp_path / "skin.csv")
    with pytest.raises(ValueError, match="label '2' is not a skin label"):
        finetune.training_split("skin", tmp_path, tmp_path / "bone.csv")


def test_the_random_layers_draw_from_the_runs_seed_in_two_streams():
    trainer = finetune.build_trainer(_tiny_classifier(), finetune.AUGMENTATIONS["skin"], (32, 32), seed=7)
    assert (trainer.get_layer("flip").seed, trainer.get_layer("affine").seed) == (7, 8)


def test_a_split_csv_that_puts_a_lesion_in_two_splits_is_refused(tmp_path):
    (tmp_path / "split.csv").write_text("path,label,group,split\na.jpg,nv,L1,train\nb.jpg,nv,L1,val\n")
    with pytest.raises(ValueError, match="L1"):
        finetune.training_split("skin", tmp_path, tmp_path / "split.csv")


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
    y = np.array([0, 0, 0, 1])
    assert finetune.balanced_accuracy(y, np.array([0, 0, 1, 1]), 7) == pytest.approx((2 / 3 + 1) / 2)


def test_augmentations_respect_anatomy():
    assert finetune.AUGMENTATIONS["pneumonia"].flip is None        # the heart stays on the left
    assert finetune.AUGMENTATIONS["bone"].flip == "horizontal"     # left and right knees mirror
    assert finetune.AUGMENTATIONS["skin"].flip == "horizontal_and_vertical"


def test_pixels_are_loaded_through_the_serving_preprocessing(tmp_path):
    path = tmp_path / "a.jpg"
    synthetic_image("skin_lesion", (40, 30)).save(path)
    from PIL import Image

    pixels = finetune.load_pixels([path], (32, 32))
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(pixels[0], resized_rgb(Image.open(path), (32, 32)))


def test_fit_keeps_the_best_epoch_and_writes_weights_history_and_curves(tmp_path):
    split = _tiny_skin_split(tmp_path)
    model = _tiny_classifier()
    out = tmp_path / "run"

    record = finetune.fit(model, "skin", split, out, _settings(), finetune.AUGMENTATIONS["skin"], (32, 32))

    assert {"model.weights.h5", "history.json", "training_curves.png"} <= {p.name for p in out.iterdir()}
    assert not (out / "checkpoint.weights.h5").exists()
    scores = record["history"]["val_balanced_accuracy"]
    assert record["epochs_run"] == len(scores) == 3
    assert record["best_validation_score"] == max(scores)
    assert {"loss", "val_loss", "accuracy", "val_accuracy", "learning_rate"} <= set(record["history"])
    assert json.loads((out / "history.json").read_text())["train_images"] == 6
    # The saved weights are the model's weights after fit, and reload into a fresh model.
    val = [s.record.path for s in split if s.split == "val"]
    x = scale(finetune.load_pixels(val, (32, 32)))
    fresh = _tiny_classifier()
    fresh.load_weights(out / "model.weights.h5")
    np.testing.assert_allclose(fresh.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_training_batches_are_full_and_every_image_takes_its_turn():
    Batches = finetune._batches_class()
    y = np.arange(10)
    pixels = np.zeros((10, 2, 2, 3), np.uint8)
    train = Batches(pixels, y, None, 4, seed=0)
    assert len(train) == 2 and all(len(train[i][1]) == 4 for i in range(2))
    seen = set()
    for _ in range(6):      # the images left over differ from epoch to epoch
        seen |= {int(v) for i in range(2) for v in train[i][1]}
        train.on_epoch_end()
    assert seen == set(range(10))
    assert len(Batches(pixels[:3], y[:3], None, 4, seed=0)) == 1     # fewer than a batch: one short batch


def test_the_validation_logs_are_keras_own_loss_accuracy_and_the_balanced_accuracy():
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    probabilities = rng.dirichlet(np.ones(3), size=len(y))
    probabilities[0] = [0.0, 1.0, 0.0]      # a certain miss: clipped as Keras clips it, not infinite

    logs = finetune.validation_logs(y, probabilities, 3)

    expected_loss = keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(
        keras.ops.convert_to_tensor(y), keras.ops.convert_to_tensor(probabilities.astype(np.float32))))
    assert logs["val_loss"] == pytest.approx(float(expected_loss.mean()), rel=1e-5)
    predicted = probabilities.argmax(1)
    assert logs["val_accuracy"] == pytest.approx((predicted == y).mean())
    recalls = [(predicted[y == c] == c).mean() for c in range(3)]
    assert logs["val_balanced_accuracy"] == pytest.approx(np.mean(recalls))


def test_augmentation_is_active_in_training_only(tmp_path):
    model = _tiny_classifier()
    trainer = finetune.build_trainer(model, finetune.AUGMENTATIONS["skin"], (32, 32))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(trainer.predict(pixels, verbose=0), model.predict(scale(pixels), verbose=0),
                               atol=1e-6)
    augmented = keras.ops.convert_to_numpy(trainer(pixels, training=True))
    assert not np.allclose(augmented, model.predict(scale(pixels), verbose=0))


def test_a_cosine_schedule_runs_every_epoch_and_decays_the_rate_toward_zero(tmp_path):
    record = finetune.fit(_tiny_classifier(), "skin", _tiny_skin_split(tmp_path), tmp_path / "run",
                          _settings(epochs=4, early_stopping_patience=1, schedule="cosine"),
                          finetune.AUGMENTATIONS["skin"], (32, 32))
    rates = record["history"]["learning_rate"]
    assert record["epochs_run"] == 4                    # no early stop
    assert 1e-2 > rates[0] > rates[1] > rates[2] > rates[3] >= 0
    assert rates[3] < 1e-2 * 0.2                        # near zero by the last epoch


def test_a_cosine_schedule_with_a_time_budget_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        finetune.main(["--task", "skin", "--out", str(tmp_path / "run"), "--schedule", "cosine",
                       "--max-minutes", "10"])
    assert "size the run with --epochs" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_time_budget_stops_after_the_epoch_that_passes_it(tmp_path):
    record = finetune.fit(_tiny_classifier(), "skin", _tiny_skin_split(tmp_path), tmp_path / "run",
                          _settings(epochs=5, max_minutes=1e-6), finetune.AUGMENTATIONS["skin"], (32, 32))
    assert record["epochs_run"] == 1


def test_a_run_on_a_jax_gpu_names_the_gpu_not_the_cpu(monkeypatch):
    import sys
    import types

    gpu = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
    monkeypatch.setitem(sys.modules, "jax", types.SimpleNamespace(devices=lambda: [gpu], __version__="0.11.2"))
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert finetune.device_description() == "NVIDIA H100 80GB HBM3 (JAX 0.11.2)"
    gpu.platform = "cpu"
    assert finetune.device_description().startswith("CPU, ")


def test_a_continued_run_records_the_run_it_started_from(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, best in ((first, 2), (second, 1)):
        folder.mkdir()
        (folder / "history.json").write_text(json.dumps({
            "settings": {"arch": "a"}, "best_epoch": best, "epochs_run": 3, "best_validation_score": 0.5,
            "fit_seconds": 10.0, "device": "GPU", "keras_backend": "torch"}))
    finetune._record_previous_run(second / "history.json", first / "model.weights.h5")
    record = json.loads((second / "history.json").read_text())
    assert record["init_weights"].endswith("first/model.weights.h5")
    assert [run["best_epoch"] for run in record["previous_runs"]] == [2]


def test_training_train_dispatches_arch_to_arch_training(tmp_path, capsys):
    from training.train import main

    assert main(["--task", "bone", "--arch", "bone_vgg_scratch", "--data", str(tmp_path),
                 "--out", str(tmp_path / "out")]) == 2
    assert "bone's shipped model is built by training.train" in capsys.readouterr().err


def test_training_train_refuses_a_version_that_cannot_name_a_model(tmp_path, capsys):
    from training.train import main

    with pytest.raises(SystemExit) as stop:
        main(["--task", "skin", "--data", str(tmp_path), "--version", "new model!"])
    assert stop.value.code == 2
    assert "--version 'new model!'" in capsys.readouterr().err


def test_train_takes_a_finetune_run_as_its_backbone(tmp_path):
    if not weights_dir().is_dir():
        pytest.skip(f"MobileNetV2 weights not found at {weights_dir()} (set DRTECH_WEIGHTS_DIR)")
    from training.architectures import mobilenet_v2_finetuned
    from training.train import _end_to_end_backbone

    model = mobilenet_v2_finetuned(7, finetune_blocks=16)
    run = tmp_path / "run"
    run.mkdir()
    model.save_weights(run / "model.weights.h5")
    (run / "history.json").write_text(json.dumps({
        "task": "skin", "settings": {"arch": "mobilenet_v2_finetuned", "monitor": "val_balanced_accuracy"},
        "augmentation": {}, "best_epoch": 4, "epochs_run": 6, "best_validation_score": 0.61,
        "fit_seconds": 100.0, "device": "GPU", "keras_backend": "torch"}))

    backbone, head, info = _end_to_end_backbone("skin", run / "model.weights.h5", None)

    x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
    pooled = np.asarray(backbone(x)).mean(axis=(1, 2))
    logits = pooled @ head.kernel + head.bias
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(expected, np.asarray(model(x)), atol=1e-5)
    assert info["best_epoch"] == 4 and len(info["weights_sha256"]) == 64
    assert info["batchnorm"] == "BatchNorm frozen"     # the run's settings predate --train-batchnorm
    with pytest.raises(ValueError, match="not bone"):
        _end_to_end_backbone("bone", run / "model.weights.h5", None)


def test_train_takes_a_run_at_another_input_size_at_that_size(tmp_path):
    if not weights_dir().is_dir():
        pytest.skip(f"MobileNetV2 weights not found at {weights_dir()} (set DRTECH_WEIGHTS_DIR)")
    from training.architectures import mobilenet_v2_finetuned
    from training.train import _end_to_end_backbone

    model = mobilenet_v2_finetuned(5, input_size=(96, 96), finetune_blocks=16)
    run = tmp_path / "run"
    run.mkdir()
    model.save_weights(run / "model.weights.h5")
    (run / "history.json").write_text(json.dumps({
        "task": "bone", "settings": {"arch": "mobilenet_v2_finetuned", "monitor": "val_accuracy"},
        "augmentation": {}, "best_epoch": 2, "epochs_run": 3, "best_validation_score": 0.6, "fit_seconds": 1.0,
        "device": "CPU", "keras_backend": "tensorflow", "input_size": [96, 96]}))

    backbone, head, info = _end_to_end_backbone("bone", run / "model.weights.h5", None)

    assert backbone.input_shape == (None, 96, 96, 3) and info["input_size"] == [96, 96]
    x = np.random.default_rng(0).uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32)
    pooled = np.asarray(backbone(x)).mean(axis=(1, 2))     # a 3x3 feature map at 96x96
    logits = pooled @ head.kernel + head.bias
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(expected, np.asarray(model(x)), atol=1e-5)


def test_the_card_says_whether_the_runs_batchnorm_learned(tmp_path):
    if not weights_dir().is_dir():
        pytest.skip(f"MobileNetV2 weights not found at {weights_dir()} (set DRTECH_WEIGHTS_DIR)")
    from training.architectures import mobilenet_v2_finetuned
    from training.train import _end_to_end_backbone

    run = tmp_path / "run"
    run.mkdir()
    mobilenet_v2_finetuned(7, finetune_blocks=16, train_batchnorm=True).save_weights(run / "model.weights.h5")
    (run / "history.json").write_text(json.dumps({
        "task": "skin", "settings": {"arch": "mobilenet_v2_finetuned", "monitor": "val_balanced_accuracy",
                                     "train_batchnorm": True},
        "augmentation": {}, "best_epoch": 1, "epochs_run": 1, "best_validation_score": 0.5,
        "fit_seconds": 1.0, "device": "GPU", "keras_backend": "torch"}))

    _, _, info = _end_to_end_backbone("skin", run / "model.weights.h5", None)

    assert info["batchnorm"] == "BatchNorm trained"
    assert "BatchNorm trained" in info["end_to_end"]

    # Continued without the flag from a run that trained it: its BatchNorm was still trained
    record = json.loads((run / "history.json").read_text())
    record["settings"]["train_batchnorm"] = False
    record["previous_runs"] = [{"settings": {"train_batchnorm": True}}]
    (run / "history.json").write_text(json.dumps(record))
    assert _end_to_end_backbone("skin", run / "model.weights.h5", None)[2]["batchnorm"] == "BatchNorm trained"


def test_train_batchnorm_is_refused_for_an_architecture_it_does_not_apply_to():
    with pytest.raises(ValueError, match="applies to mobilenet_v2_finetuned"):
        finetune.build_model("skin_cnn_75x100", "skin", None, train_batchnorm=True)


def test_a_seeded_run_starts_from_the_same_head_every_time(tmp_path, monkeypatch):
    from training.splits import write_split_csv

    write_split_csv(_tiny_skin_split(tmp_path), tmp_path / "split.csv", tmp_path)
    started: list[np.ndarray] = []

    def record_start(model, *args, **kwargs):
        started.append(model.get_layer("probabilities").get_weights()[0])
        return {"best_epoch": 1, "epochs_run": 1, "best_validation_score": 0.5, "fit_seconds": 0.0, "device": "x"}

    monkeypatch.setattr(finetune, "fit", record_start)
    monkeypatch.setattr(finetune, "build_model", lambda *args: _tiny_classifier())
    for run in ("a", "b"):
        keras.utils.set_random_seed(len(started) + 100)     # whatever came before the run
        finetune.main(["--task", "skin", "--arch", "skin_cnn_75x100", "--data", str(tmp_path), "--seed", "5",
                       "--split-csv", str(tmp_path / "split.csv"), "--out", str(tmp_path / run)])

    np.testing.assert_array_equal(started[0], started[1])


def test_finetune_refuses_mura_and_misplaced_flags_before_writing_anything(tmp_path, capsys):
    (tmp_path / "MURA-v1.1").mkdir()
    with pytest.raises(SystemExit):
        finetune.main(["--task", "bone", "--data", str(tmp_path), "--out", str(tmp_path / "mura-run")])
    assert "knee KL grades only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        finetune.main(["--task", "skin", "--arch", "skin_cnn_75x100", "--train-batchnorm",
                       "--data", str(tmp_path), "--out", str(tmp_path / "cnn-run")])
    assert "applies to mobilenet_v2_finetuned" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        finetune.main(["--task", "skin", "--arch", "skin_cnn_75x100", "--input-size", "288",
                       "--data", str(tmp_path), "--out", str(tmp_path / "cnn-run")])
    assert "--input-size applies to mobilenet_v2_finetuned" in capsys.readouterr().err
    # Weights recovered from an export, or a run continued from them: their BatchNorm is folded
    recovered, continued = tmp_path / "recovered", tmp_path / "continued"
    for run, record in ((recovered, {"recovered_from": {"version": "2026.11.2"}}),
                        (continued, {"previous_runs": [{"settings": {}}, {"recovered_from": {"version": "2026.11.2"}}]})):
        run.mkdir()
        (run / "history.json").write_text(json.dumps(record))
        with pytest.raises(SystemExit):
            finetune.main(["--task", "bone", "--train-batchnorm", "--init-weights", str(run / "model.weights.h5"),
                           "--data", str(tmp_path), "--out", str(tmp_path / "bn-run")])
        assert "BatchNorm is folded into its convolutions" in capsys.readouterr().err
    assert not any((tmp_path / run).exists() for run in ("mura-run", "cnn-run", "bn-run"))


def test_a_continued_run_keeps_the_input_size_of_the_run_it_continues(tmp_path, monkeypatch):
    from training.splits import write_split_csv

    write_split_csv(_tiny_skin_split(tmp_path), tmp_path / "split.csv", tmp_path)
    first = tmp_path / "first"
    first.mkdir()
    shutil.copyfile(tmp_path / "split.csv", first / "split.csv")
    _tiny_classifier().save_weights(first / "model.weights.h5")
    (first / "history.json").write_text(json.dumps({"input_size": [96, 96]}))
    sizes: dict[str, tuple] = {}

    def build(arch, task, weights, train_batchnorm=False, input_size=None):
        sizes["built"] = input_size
        return _tiny_classifier()

    def record_fit(model, task, split, out, settings, augmentation, input_size):
        sizes["trained"] = input_size
        return {"best_epoch": 1, "epochs_run": 1, "best_validation_score": 0.5, "fit_seconds": 0.0, "device": "x"}

    monkeypatch.setattr(finetune, "build_model", build)
    monkeypatch.setattr(finetune, "fit", record_fit)
    monkeypatch.setattr(finetune, "_record_previous_run", lambda *args: None)
    arguments = ["--task", "skin", "--data", str(tmp_path), "--split-csv", str(tmp_path / "split.csv"),
                 "--init-weights", str(first / "model.weights.h5")]

    finetune.main([*arguments, "--out", str(tmp_path / "a")])
    assert sizes == {"built": (96, 96), "trained": (96, 96)}
    finetune.main([*arguments, "--input-size", "128", "--out", str(tmp_path / "b")])
    assert sizes == {"built": (128, 128), "trained": (128, 128)}


def test_the_card_names_the_class_weights_of_the_head_that_won():
    from training.heads import TrainedHead
    from training.train import choose_head

    def head(score: float) -> TrainedHead:
        return TrainedHead(np.zeros((4, 2)), np.zeros(2), l2=0.0, val_score=score, epochs=1)

    refit, run = head(0.70), head(0.72)
    assert choose_head(refit, run, {"settings": {"class_weight": "none"}})[1:] == \
        ("head trained jointly with the fine-tuned blocks", "none")
    assert choose_head(refit, run, {"blocks": 10})[2] == "balanced"      # --finetune-blocks trains balanced
    assert choose_head(refit, head(0.69), {"settings": {"class_weight": "none"}})[1:] == \
        ("head refit on pooled features", "balanced")
    assert choose_head(refit, None, None)[0] is refit


def test_a_named_head_is_kept_whatever_its_validation_score():
    from training.heads import TrainedHead
    from training.train import choose_head

    def head(score: float) -> TrainedHead:
        return TrainedHead(np.zeros((4, 2)), np.zeros(2), l2=0.0, val_score=score, epochs=1)

    refit, run = head(0.70), head(0.69)
    info = {"settings": {"class_weight": "sqrt"}}
    assert choose_head(refit, run, info, "jointly-trained")[0:3:2] == (run, "sqrt")
    assert choose_head(refit, head(0.72), info, "refit")[0] is refit
    with pytest.raises(ValueError, match="no jointly trained head"):
        choose_head(refit, None, None, "jointly-trained")


def test_a_head_taken_out_of_an_exported_model_is_not_called_trained_jointly():
    """Weights straight from training.recover_weights trained nothing: their head is the model's."""
    from training.heads import TrainedHead
    from training.train import choose_head

    refit = TrainedHead(np.zeros((4, 2)), np.zeros(2), l2=0.0, val_score=0.70, epochs=1)
    recovered = TrainedHead(np.zeros((4, 2)), np.zeros(2), l2=0.0, val_score=0.72, epochs=1)
    info = {"settings": {"class_weight": "none"},
            "recovered_from": {"model": "services/bone/model/model.onnx", "version": "2026.11.2",
                               "head": "kl_probabilities", "head_source": "head refit on pooled features"}}
    assert choose_head(refit, recovered, info)[1] == (
        "head of services/bone/model/model.onnx 2026.11.2 "
        "(training.recover_weights; there: head refit on pooled features)")


def test_continuing_a_run_trained_on_another_split_is_refused_before_training(tmp_path):
    """Weights that saw this split's validation (or test) images must not be fine-tuned further on it."""
    from training.splits import write_split_csv

    split = _tiny_skin_split(tmp_path)
    write_split_csv(split, tmp_path / "split.csv", tmp_path)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    # The earlier run had one of this split's validation images in its training rows
    first_val = next(i for i, item in enumerate(split) if item.split == "val")
    swapped = [SplitRecord(item.record, "train" if i == first_val else item.split)
               for i, item in enumerate(split)]
    write_split_csv(swapped, earlier / "split.csv", tmp_path)
    args = ["--task", "skin", "--data", str(tmp_path), "--split-csv", str(tmp_path / "split.csv"),
            "--init-weights", str(earlier / "model.weights.h5"), "--out", str(tmp_path / "run")]

    with pytest.raises(ValueError, match="differ from this split's"):
        finetune.main(args)
    assert not (tmp_path / "run").exists()
