"""Demo ConvNet backbone."""

import numpy as np
import pytest

from keras_ssl.backbones import ConvNet


@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes(channels):
    model = ConvNet(input_channels=channels)
    fmap = ConvNet(input_channels=channels, pooling=None)
    assert model.output_dim == 256
    for size, expected in [(28, 4), (32, 4), (64, 8)]:
        x = np.random.uniform(size=(2, size, size, channels)).astype("float32")
        assert tuple(model(x).shape) == (2, 256)
        assert tuple(fmap(x).shape) == (2, expected, expected, 256)


def test_default_widths():
    model = ConvNet(input_channels=1)
    assert model.widths == (32, 64, 128, 256)
    assert model.output_dim == 256
    assert model.count_params() < 500_000  # cheap enough for CPU demos
    assert [layer.name for layer in model.layers[-4:]] == [
        "stage4_conv",
        "stage4_bn",
        "stage4_relu",
        "avg_pool",
    ]


def test_invalid_arguments():
    for kwargs in [{"widths": ()}, {"widths": (8, 0)}, {"pooling": "sum"}]:
        with pytest.raises(ValueError):
            ConvNet(**kwargs)
