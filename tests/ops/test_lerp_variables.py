"""`lerp_variables` against NumPy: target <- (1 - w) * target + w * source."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.ops._multi_tensor import lerp_variables
from tests._support.torch_counting import count_numbers_made_tensors


@pytest.mark.parametrize("weight_kind", ["python float", "tensor"])
def test_each_target_moves_towards_its_source(weight_kind):
    rng = np.random.default_rng(0)
    shapes, dtypes = [(3, 4), (5,), (2, 2, 2)], ["float32", "float32", "float16"]
    starts = [rng.normal(size=s).astype(d) for s, d in zip(shapes, dtypes, strict=True)]
    sources = [rng.normal(size=s).astype("float32") for s in shapes]
    targets = [keras.Variable(a) for a in starts]
    w = 0.1
    weight = w if weight_kind == "python float" else ops.convert_to_tensor(w, "float32")
    lerp_variables(targets, [ops.convert_to_tensor(s) for s in sources], weight)
    for start, source, target in zip(starts, sources, targets, strict=True):
        out = ops.convert_to_numpy(target)
        assert out.dtype == start.dtype
        tolerance = 1e-3 if start.dtype == np.float16 else 1e-6
        expected = (1 - w) * start.astype("float64") + w * source.astype("float64")
        np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance)


def test_weights_zero_and_one_give_target_and_source_exactly():
    target = keras.Variable(np.array([1.5, -2.0, 3.25], "float32"))
    source = np.array([0.1, 0.2, 0.3], "float32")
    lerp_variables([target], [source], 0.0)
    np.testing.assert_array_equal(ops.convert_to_numpy(target), [1.5, -2.0, 3.25])
    lerp_variables([target], [source], 1.0)
    np.testing.assert_array_equal(ops.convert_to_numpy(target), source)


def test_torch_python_float_weight_makes_no_tensor_from_a_number():
    if keras.backend.backend() != "torch":
        pytest.skip("about PyTorch's eager update (on CUDA each such tensor is a host copy)")
    import torch

    targets = [keras.Variable(np.zeros((4, 4), "float32")) for _ in range(3)]
    sources = [torch.ones(4, 4) for _ in range(3)]
    with count_numbers_made_tensors() as count:
        lerp_variables(targets, sources, 0.25)
    assert count[0] == 0
    for target in targets:
        np.testing.assert_array_equal(ops.convert_to_numpy(target), np.full((4, 4), 0.25))
