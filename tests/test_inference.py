"""inference.py: a run folder's model loaded (the checkpoint it names), images predicted whole, in
tiles and over flips."""

import shutil

import keras
import numpy as np
import pytest

import errors
import inference
import model


def test_tiled_inference_equals_whole_image_inference():
    keras.utils.set_random_seed(0)  # some initial weights barely look 16 px away (CI saw 5e-5)
    unet = model.build_unet(base_channels=4, in_channels=3)
    image = np.random.default_rng(0).random((301, 333, 3)).astype(np.float32)
    predict = inference.make_predictor(unet, 3)
    whole = inference.predict_image(predict, image)
    tiled = inference.predict_image(predict, image, tile_size=64, overlap=128)
    assert tiled.shape == whole.shape == (301, 333)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    too_little_context = inference.predict_image(predict, image, tile_size=64, overlap=16)
    assert np.abs(too_little_context - whole).max() > 1e-4  # the check above can fail


def test_flip_averaging_flips_each_prediction_back():
    image = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
    # A predictor that follows the image is unchanged by the averaging...
    np.testing.assert_array_equal(
        inference.predict_flipped(lambda x: x[..., 0] ** 2, image), image[..., 0] ** 2
    )
    # ...and one that ignores it averages its map with the map's three flips.
    fixed = np.array([[0.0, 1, 2], [3, 4, 5]])
    np.testing.assert_allclose(
        inference.predict_flipped(lambda x: fixed, image), np.full((2, 3), 2.5)
    )


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(trained, tmp_path):
    """What a run killed while saving leaves: evaluation loads (and names) the newest checkpoint
    that reads back, with that step's weights; none readable is one error naming them."""
    logdir = tmp_path / 'log'
    shutil.copytree(trained, logdir)
    data = logdir / 'checkpoints' / 'ckpt-200.data-00000-of-00001'
    data.write_bytes(data.read_bytes()[:100])
    unet, _, name, step = inference.load_model(str(logdir))
    assert (name, step) == ('step100', 100)
    older, _, _, _ = inference.load_model(str(trained), '100')
    for mine, theirs in zip(unet.get_weights(), older.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    data = logdir / 'checkpoints' / 'ckpt-100.data-00000-of-00001'
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(
        errors.UserError, match=r'checkpoints: no checkpoint can be read \(ckpt-200: '
    ):
        inference.load_model(str(logdir))
