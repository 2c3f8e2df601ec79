"""The U-Net's size from its layer sizes, both upsampling modes, pad-and-crop, saved architecture."""

import numpy as np
import pytest

import errors
import model
import run_folder


def expected_parameters(base, in_channels, classes, transpose_conv, depth=4):
    """Counted by hand from the layers: 3x3 convs without bias, batch norm (4 per channel:
    gamma, beta, moving mean and variance), 2x2 transposed or 1x1 upsampling convs with bias,
    and a 1x1 head with bias."""

    def block(cin, cout):
        return 9 * cin * cout + 4 * cout + 9 * cout * cout + 4 * cout

    total, cin = 0, in_channels
    for level in range(depth):
        total += block(cin, base * 2**level)
        cin = base * 2**level
    total += block(cin, base * 2**depth)
    for level in reversed(range(depth)):
        channels = base * 2**level
        kernel = 4 if transpose_conv else 1
        total += kernel * 2 * channels * channels + channels  # from 2*channels below
        total += block(2 * channels, channels)
    return total + base * classes + classes


def test_default_net_parameter_count():
    default = model.build_unet()  # base 32, nearest + 1x1, gray input, 2 classes
    print(f'default U-Net: {default.count_params():,} parameters')
    assert default.count_params() == expected_parameters(32, 1, 2, False) == 7_246_146
    assert model.build_unet(
        transpose_conv=True, in_channels=3
    ).count_params() == expected_parameters(32, 3, 2, True)


@pytest.mark.parametrize('base', [4, 16])
def test_both_upsampling_modes_give_the_same_shapes(base):
    image = np.random.default_rng(0).random((2, 48, 32, 1), np.float32)
    shapes = {model.build_unet(3, base, transpose, 1)(image).shape for transpose in (False, True)}
    assert shapes == {(2, 48, 32, 3)}
    assert model.build_unet(2, base, True, 1).count_params() == expected_parameters(
        base, 1, 2, True
    )


@pytest.mark.parametrize('depth', [1, 2, 3])
def test_a_shallower_net_has_fewer_levels_and_the_same_output_shape(depth):
    unet = model.build_unet(2, 8, False, 1, depth)
    assert unet.count_params() == expected_parameters(8, 1, 2, False, depth)
    assert unet.get_layer('bottom_conv1').output.shape[-1] == 8 * 2**depth
    image = np.random.default_rng(0).random((1, 48, 32, 1), np.float32)
    assert model.predict_probabilities(unet, image).shape == (1, 48, 32, 2)


@pytest.mark.parametrize('height, width', [(37, 53), (584, 565), (16, 17)])
def test_predict_pads_odd_sizes_and_crops_back(height, width):
    unet = model.build_unet(base_channels=4, in_channels=3)
    images = np.random.default_rng(1).random((1, height, width, 3), np.float32)
    probabilities = model.predict_probabilities(unet, images).numpy()
    assert probabilities.shape == (1, height, width, 2)
    np.testing.assert_allclose(probabilities.sum(-1), 1, atol=1e-5)


def test_predict_on_a_multiple_of_16_is_the_plain_model():
    unet = model.build_unet(base_channels=4)
    images = np.random.default_rng(2).random((1, 32, 48, 1), np.float32)
    np.testing.assert_allclose(
        model.predict_probabilities(unet, images),
        utils_softmax(unet(images, training=False).numpy()),
        atol=1e-6,
    )


def utils_softmax(logits):
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def test_architecture_round_trip_and_conflicts(tmp_path):
    saved = {
        'num_classes': 2,
        'base_channels': 16,
        'transpose_conv': True,
        'preprocess': True,
        'depth': 3,
    }
    run_folder.save_architecture(str(tmp_path), saved)
    assert run_folder.load_architecture(str(tmp_path)) == saved
    assert model.check_architecture(saved, {'base_channels': 16}, 'x') == saved
    with pytest.raises(
        errors.UserError,
        match=r'x holds a model of another architecture: '
        r'--base_channels=32 \(trained with 16\), --transpose_conv=False \(trained with True\), '
        r'--depth=4 \(trained with 3\)',
    ):
        model.check_architecture(
            saved, {'transpose_conv': False, 'base_channels': 32, 'depth': 4}, 'x'
        )
    (tmp_path / run_folder.ARCHITECTURE_FILE).write_text('{"num_classes": 2}')
    with pytest.raises(errors.UserError, match='architecture.json: "base_channels" is missing'):
        run_folder.load_architecture(str(tmp_path))
