"""The MobileNetV2 backbone gets every ImageNet weight from the .npy files, and its features are sensible."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.support import ROOT, synthetic_image

pytestmark = pytest.mark.training
pytest.importorskip("tensorflow", reason="TensorFlow (the training extra) is not installed")

WEIGHTS = Path(os.environ.get(
    "DRTECH_WEIGHTS_DIR", ROOT.parent / "shared" / "weights" / "mobilenet_v2_1.0_224_imagenet" / "weights"))


@pytest.fixture(scope="module")
def backbone():
    if not WEIGHTS.is_dir():
        pytest.skip(f"MobileNetV2 weights not found at {WEIGHTS} (set DRTECH_WEIGHTS_DIR)")
    from training.backbone import build_backbone
    return build_backbone(WEIGHTS)


def test_every_weighted_layer_holds_the_checkpoint_values(backbone):
    assert backbone.count_params() == 2_257_984
    expected = {
        "Conv1": ["Conv_weights"],
        "block_5_depthwise": ["expanded_conv_5_depthwise_depthwise_weights"],
        "expanded_conv_project_BN": [f"expanded_conv_project_BatchNorm_{s}"
                                     for s in ("gamma", "beta", "moving_mean", "moving_variance")],
        "Conv_1_bn": [f"Conv_1_BatchNorm_{s}" for s in ("gamma", "beta", "moving_mean", "moving_variance")],
    }
    for layer_name, files in expected.items():
        for weight, file in zip(backbone.get_layer(layer_name).get_weights(), files, strict=True):
            np.testing.assert_array_equal(weight, np.load(WEIGHTS / f"{file}.npy", allow_pickle=False))


def test_features_are_not_degenerate_and_tell_images_apart(backbone):
    from services.core.preprocessing import batch

    images = batch([synthetic_image("chest_xray", seed=1), synthetic_image("skin_lesion", seed=1),
                    synthetic_image("chest_xray", seed=2)])

    features = backbone.predict(images, verbose=0).mean(axis=(1, 2))

    assert features.shape == (3, 1280)
    assert np.isfinite(features).all()
    # ReLU6 outputs: a working ImageNet backbone activates a fair share of channels, within [0, 6].
    assert 0.0 <= features.min() and features.max() <= 6.0
    assert (features > 0.01).mean() > 0.2
    distance = lambda a, b: np.linalg.norm(features[a] - features[b])  # noqa: E731
    # Two similar radiographs are closer to each other than to a skin lesion.
    assert distance(0, 2) < distance(0, 1)


def test_missing_weights_folder_is_a_clear_error(tmp_path):
    from training.backbone import build_backbone

    with pytest.raises(FileNotFoundError, match="DRTECH_WEIGHTS_DIR"):
        build_backbone(tmp_path / "nowhere")
