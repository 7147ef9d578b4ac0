import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.layers import PredictionHead, ProjectionHead

EPSILON = 1e-5


def _numpy_head(head, x, training):
    """The head's MLP in float64 from its own weights: `Linear [-> BN] -> ReLU` per hidden
    layer, then `Linear [-> BN]`; batch norm with the batch's biased variance when training
    and the moving statistics otherwise."""
    x = x.astype(np.float64)
    for block in head.blocks:
        weights = {w.name: ops.convert_to_numpy(w).astype(np.float64) for w in block.weights}
        if isinstance(block, keras.layers.Dense):
            x = x @ weights["kernel"] + weights.get("bias", 0.0)
        elif isinstance(block, keras.layers.BatchNormalization):
            if training:
                mean, variance = x.mean(axis=0), x.var(axis=0)
            else:
                mean, variance = weights["moving_mean"], weights["moving_variance"]
            x = (x - mean) / np.sqrt(variance + EPSILON)
            x = x * weights.get("gamma", 1.0) + weights.get("beta", 0.0)
        else:
            x = np.maximum(x, 0.0)
    return x


def _randomize(head, rng):
    for weight in head.weights:
        value = rng.normal(size=weight.shape)
        if "variance" in weight.path:
            value = np.abs(value) + 0.5
        weight.assign(value.astype("float32"))


@pytest.mark.parametrize(
    "kwargs, weight_names",
    [
        # SimCLR: Linear (no bias) -> BN -> ReLU -> Linear.
        ({}, ["kernel", "gamma", "beta", "moving_mean", "moving_variance", "kernel", "bias"]),
        # MoCo-v2: no batch norm, biases everywhere.
        ({"batch_norm": False}, ["kernel", "bias", "kernel", "bias"]),
        # SimCLR v2's last layer: no bias, batch norm with a learned scale and no shift.
        (
            {"num_layers": 3, "output_batch_norm": True},
            ["kernel", "gamma", "beta", "moving_mean", "moving_variance"] * 2
            + ["kernel", "gamma", "moving_mean", "moving_variance"],
        ),
        ({"num_layers": 1}, ["kernel", "bias"]),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_matches_a_numpy_mlp(kwargs, weight_names, training):
    head = ProjectionHead(output_dim=6, hidden_dim=10, **kwargs)
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    head.build(x.shape)
    assert [w.name for w in head.weights] == weight_names
    _randomize(head, np.random.default_rng(1))
    expected = _numpy_head(head, x, training)
    got = ops.convert_to_numpy(head(x, training=training))
    assert got.shape == (16, 6)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_config_round_trip_keeps_the_layout():
    for head in (
        ProjectionHead(output_dim=4, hidden_dim=6, num_layers=3, output_batch_norm=True),
        PredictionHead(output_dim=4, hidden_dim=6),
    ):
        clone = head.__class__.from_config(head.get_config())
        head.build((2, 4))
        clone.build((2, 4))
        assert [w.path.split("/", 1)[1] for w in clone.weights] == [
            w.path.split("/", 1)[1] for w in head.weights
        ]
        assert clone.get_config() == head.get_config()


def test_prediction_head_has_byols_widths():
    head = PredictionHead()
    head.build((2, 256))
    assert [tuple(w.shape) for w in head.trainable_weights] == [
        (256, 4096),
        (4096,),
        (4096,),
        (4096, 256),
        (256,),
    ]


def test_rejects_no_layers():
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        ProjectionHead(num_layers=0)
