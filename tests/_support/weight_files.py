"""Checks that a keras_ssl layer and the Keras layer it replaces read each other's files."""

import numpy as np
from keras import ops


def assert_weight_files_interchange(model, ours, keras_layer, tmp_path, seed=0):
    """`model(layer_class)` builds a model from a layer class; a weights file written by
    the model made with either class loads unchanged into the model made with the other."""
    rng = np.random.default_rng(seed)
    for source, target in ((ours, keras_layer), (keras_layer, ours)):
        written, read = model(source), model(target)
        written.set_weights([rng.normal(size=w.shape).astype("float32") for w in written.weights])
        path = str(tmp_path / f"{source.__module__}.weights.h5")
        written.save_weights(path)
        read.load_weights(path)
        for a, b in zip(written.weights, read.weights, strict=True):
            np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
