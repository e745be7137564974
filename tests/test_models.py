"""Every registered model builds, trains a step, and survives a save and safe-mode load."""

from __future__ import annotations

import numpy as np
import pytest

import imgcls
from imgcls.errors import ImgclsError
from imgcls.models import create_model, get_spec, list_models


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_and_round_trips(name, tmp_path):
    import keras

    spec = get_spec(name)
    side = max(spec.min_side, 16)
    model = create_model(name, (side, side, 3), 3)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, side, side, 3)).astype(np.uint8)
    spec.init_from_data(model, x, seed=0)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(x.astype("float32"), np.eye(3)[rng.integers(0, 3, 8)], epochs=1, verbose=0)
    probs = model.predict(x.astype("float32"), verbose=0)
    assert probs.shape == (8, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x.astype("float32"), verbose=0), probs, rtol=1e-5, atol=1e-6)


def test_registry_lists_models():
    assert {"classic", "fast"} <= set(imgcls.list_models())


def test_too_small_images_are_refused():
    with pytest.raises(ImgclsError, match="at least"):
        create_model("classic", (4, 4, 3), 2)
