"""The PyTorch step's optimizer update (`trainer/_torch.py::_apply_gradients`: clipping over
all gradients at once, `weight_decay=0.0` skipped, Keras's Adam in fewer passes) against
Keras's own `optimizer.apply`, step by step."""

import keras
import numpy as np
import pytest
from keras import ops

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="about the PyTorch train step's optimizer update"
)

SHAPES = [(6, 5), (5,), (3, 3, 2, 4), (1,)]


def _optimizers():
    schedule = keras.optimizers.schedules.CosineDecay(3e-2, decay_steps=5, alpha=0.1)
    return {
        "Adam": lambda: keras.optimizers.Adam(2e-2),
        "Adam, large epsilon": lambda: keras.optimizers.Adam(2e-2, epsilon=1e-2),
        "AdamW, no decay, clipnorm": lambda: keras.optimizers.AdamW(
            2e-2, weight_decay=0.0, clipnorm=0.3
        ),
        "AdamW, decay, schedule": lambda: keras.optimizers.AdamW(
            schedule, weight_decay=0.05, beta_1=0.8, beta_2=0.95
        ),
        "Adam, amsgrad": lambda: keras.optimizers.Adam(2e-2, amsgrad=True),
        "SGD, no decay": lambda: keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.0),
    }


def _run(make_optimizer, through_trainer, dtypes):
    from keras_ssl.trainer._torch import _apply_gradients

    rng = np.random.default_rng(0)
    variables = [
        keras.Variable(rng.normal(size=s).astype(d), name=f"w{i}")
        for i, (s, d) in enumerate(zip(SHAPES, dtypes, strict=True))
    ]
    optimizer = make_optimizer()
    optimizer.build(variables)
    before = {name: getattr(optimizer, name) for name in ("clipnorm", "weight_decay")}
    for step in range(4):
        scale = 0.01 if step % 2 else 1.0  # small and large gradients: epsilon and clipping
        gradients = [
            ops.convert_to_tensor((scale * rng.normal(size=v.shape)).astype(v.dtype))
            for v in variables
        ]
        if through_trainer:
            _apply_gradients(optimizer, gradients, variables)
            assert {n: getattr(optimizer, n) for n in before} == before
            assert "_parallel_update_step" not in vars(optimizer)
        else:
            optimizer.apply(gradients, variables)
    return [ops.convert_to_numpy(v) for v in variables + list(optimizer.variables)]


@pytest.mark.parametrize("name", sorted(_optimizers()))
def test_update_matches_keras_optimizer_apply(name):
    make = _optimizers()[name]
    dtypes = ["float32"] * len(SHAPES)
    ours, keras_own = _run(make, True, dtypes), _run(make, False, dtypes)
    assert len(ours) == len(keras_own)
    for a, b in zip(ours, keras_own, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


def test_mixed_dtypes_take_keras_update():
    dtypes = ["float32", "float16", "float32", "float32"]
    make = _optimizers()["Adam"]
    for a, b in zip(_run(make, True, dtypes), _run(make, False, dtypes), strict=True):
        np.testing.assert_array_equal(a, b)
