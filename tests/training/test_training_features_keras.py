"""training.features with real Keras backbones: cached features belong to the backbone (and input
size) that computed them. The rest is in tests/unit/test_training_features.py."""

from __future__ import annotations

import numpy as np

from tests.support import synthetic_image


def test_cached_features_belong_to_the_backbone_that_computed_them(tmp_path):
    """Features are cached by image list and by the backbone's weights: another backbone (another
    --weights folder, the same task name) computes its own instead of reading the first one's."""
    import keras

    from training.features import MID_LAYER, extract

    paths = []
    for seed in range(2):
        paths.append(tmp_path / f"knee{seed}.png")
        synthetic_image("bone_xray", size=(64, 64), seed=seed).save(paths[-1])

    def backbone(seed: int):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((224, 224, 3))
        middle = keras.layers.Conv2D(4, 3, strides=16, name=MID_LAYER)(inputs)
        return keras.Model(inputs, keras.layers.Conv2D(8, 3)(middle))

    first, other = backbone(1), backbone(2)
    cache = tmp_path / "cache"
    a = extract(first, paths, "bone", cache_dir=cache)
    b = extract(other, paths, "bone", cache_dir=cache)
    assert not np.allclose(a.pooled, b.pooled)
    np.testing.assert_array_equal(extract(first, paths, "bone", cache_dir=cache).pooled, a.pooled)
    assert len(list(cache.glob("*.npz"))) == 2


def test_the_same_backbone_at_another_input_size_caches_its_own_features(tmp_path):
    """Upsampled inputs (training.finetune --input-size) give other features from the same weights."""
    import keras

    from training.features import MID_LAYER, extract

    path = tmp_path / "knee.png"
    synthetic_image("bone_xray", size=(64, 64), seed=0).save(path)

    def backbone(side: int):
        keras.utils.set_random_seed(1)      # the same weights at every size
        inputs = keras.Input((side, side, 3))
        middle = keras.layers.Conv2D(4, 3, strides=16, name=MID_LAYER)(inputs)
        return keras.Model(inputs, keras.layers.Conv2D(8, 3)(middle))

    cache = tmp_path / "cache"
    at_224 = extract(backbone(224), [path], "bone", cache_dir=cache)
    at_288 = extract(backbone(288), [path], "bone", cache_dir=cache)

    assert at_224.mid.shape[1:3] == (14, 14) and at_288.mid.shape[1:3] == (18, 18)
    assert len(list(cache.glob("*.npz"))) == 2
    assert not np.allclose(at_224.pooled, at_288.pooled)
