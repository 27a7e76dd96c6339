"""EfficientNet-Lite2 is built from the shared .npy weights exactly as their README specifies."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support import ROOT

pytestmark = pytest.mark.training
pytest.importorskip("tensorflow", reason="TensorFlow (the training extra) is not installed")

WEIGHTS = Path(os.environ.get("DRTECH_LITE2_WEIGHTS_DIR",
                              ROOT.parent / "shared" / "weights" / "efficientnet_lite2_imagenet"))


@pytest.fixture(scope="module")
def classifier():
    if not (WEIGHTS / "tensors.json").is_file():
        pytest.skip(f"EfficientNet-Lite2 weights not found at {WEIGHTS} (set DRTECH_LITE2_WEIGHTS_DIR)")
    from training.efficientnet_lite import build_backbone
    return build_backbone(WEIGHTS, include_classifier=True)


def test_the_weights_readme_check_passes(classifier):
    """grace_hopper.jpg at 260x260 bicubic is ImageNet class 652, "military uniform", p ~0.20."""
    from matplotlib import cbook
    from PIL import Image

    image = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    pixels = np.asarray(image.resize((260, 260), Image.Resampling.BICUBIC), np.float32)
    for scaled in ((pixels - 127.0) / 128.0, pixels / 127.5 - 1.0):    # the weights' scaling, and ours
        probabilities = classifier.predict(scaled[None], verbose=0)[0]
        assert probabilities.argmax() == 652
        assert 0.15 < probabilities.max() < 0.25
    assert classifier.count_params() == 6_150_168


def test_layouts_are_converted_from_pytorch_to_keras(classifier):
    depthwise = np.load(WEIGHTS / "_blocks.5._depthwise_conv.weight.npy")      # [ch, 1, kh, kw]
    np.testing.assert_array_equal(classifier.get_layer("block5_depthwise").get_weights()[0],
                                  depthwise.transpose(2, 3, 0, 1))
    stem = np.load(WEIGHTS / "_conv_stem.weight.npy")                           # [out, in, kh, kw]
    np.testing.assert_array_equal(classifier.get_layer("stem").get_weights()[0], stem.transpose(2, 3, 1, 0))
    gamma, beta, mean, variance = classifier.get_layer("head_bn").get_weights()
    np.testing.assert_array_equal(variance, np.load(WEIGHTS / "_bn1.running_var.npy"))
    assert classifier.get_layer("head_bn").epsilon == 1e-3


def test_a_folder_missing_a_tensor_is_refused(tmp_path):
    if not (WEIGHTS / "tensors.json").is_file():
        pytest.skip(f"EfficientNet-Lite2 weights not found at {WEIGHTS}")
    from training.efficientnet_lite import build_backbone

    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS, copy)
    (copy / "_blocks.7._bn1.running_var.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"_blocks\.7\._bn1\.running_var"):
        build_backbone(copy)


def test_the_backbone_ends_in_a_1280_channel_map_at_any_input_size():
    if not (WEIGHTS / "tensors.json").is_file():
        pytest.skip(f"EfficientNet-Lite2 weights not found at {WEIGHTS}")
    from training.efficientnet_lite import build_backbone

    backbone = build_backbone(WEIGHTS, input_size=(224, 224))
    assert backbone.output.shape[1:] == (7, 7, 1280)
    assert backbone.count_params() == 4_869_168
