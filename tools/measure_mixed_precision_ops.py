"""Two ops of a `mixed_bfloat16` DINO step, each in its float32 form and in the form
keras_ssl runs, forward + backward on the current Keras backend (PyTorch or TensorFlow):

- batch norm in training mode on the largest map of DINO's CIFAR ResNet-18 step,
  `(128, 32, 32, 64)` in bfloat16: normalised from a float32 copy of the input and rounded
  back (as Keras's layer), against the 16-bit input handed to the fused kernel
  (`keras_ssl.layers.fused_batch_norm.normalize_with_batch_statistics`);
- DINO's last layer, `(512, 256) @ (256, 65536)` (8 crops of 64 images, K = 65,536): the
  product in float32, against the product in bfloat16 (`DINOHead.call`).

    KERAS_BACKEND=torch python tools/measure_mixed_precision_ops.py
    KERAS_BACKEND=tensorflow python tools/measure_mixed_precision_ops.py

Prints the median of 9 (after 2 untimed runs) with 2 threads. Two runs on a 2-core CPU
with bfloat16 matrix units (AMX), nothing else running: PyTorch 77-80 against 33-46 ms
(batch norm) and 357-363 against 161-167 ms (product); TensorFlow 32 against 22 ms and
199-205 against 87 ms.
"""

import time

import keras
import numpy as np
from keras import ops

from keras_ssl.layers.fused_batch_norm import normalize_with_batch_statistics

THREADS = 2


def _gradient_fn(loss, arrays):
    """A function that returns the gradients of `loss(*arrays)` w.r.t. each array."""
    if keras.backend.backend() == "torch":

        def torch_gradients():
            tensors = [a.detach().requires_grad_() for a in arrays]
            loss(*tensors).backward()
            return [t.grad for t in tensors]

        return torch_gradients
    import tensorflow as tf

    @tf.function
    def tape_gradients(*tensors):
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = loss(*tensors)
        return tape.gradient(value, tensors)

    return lambda: [g.numpy() for g in tape_gradients(*arrays)]  # .numpy() waits for them


def _median_ms(fn, rounds=9, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1e3 * sorted(times)[rounds // 2], 1)


def _batch_norm(float32_copy, rng):
    shape = (128, 32, 32, 64)
    x = ops.cast(rng.normal(size=shape).astype("float32"), "bfloat16")
    upstream = ops.cast(rng.normal(size=shape).astype("float32"), "bfloat16")
    gamma, beta = ops.ones((shape[-1],)), ops.zeros((shape[-1],))

    def loss(x, gamma, beta):
        inputs = ops.cast(x, "float32") if float32_copy else x
        y, _, _ = normalize_with_batch_statistics(inputs, gamma, beta, 3, 1e-5)
        return ops.sum(ops.cast(ops.cast(y, "bfloat16") * upstream, "float32"))

    return _gradient_fn(loss, [x, gamma, beta])


def _last_layer(dtype, rng):
    features = ops.convert_to_tensor(rng.normal(size=(512, 256)).astype("float32"))
    kernel = ops.convert_to_tensor(rng.normal(size=(256, 65536)).astype("float32"))

    def loss(features, kernel):
        logits = ops.matmul(ops.cast(features, dtype), ops.cast(kernel, dtype))
        return ops.sum(ops.cast(ops.cast(logits, "bfloat16"), "float32"))

    return _gradient_fn(loss, [features, kernel])


def main():
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(THREADS)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    else:
        raise SystemExit("KERAS_BACKEND=torch or tensorflow: JAX's batch norm is not fused")
    rng = np.random.default_rng(0)
    print(
        f"{backend}, forward + backward, ms: batch norm (128, 32, 32, 64) bfloat16,",
        f"from a float32 copy {_median_ms(_batch_norm(True, rng))},",
        f"16-bit input {_median_ms(_batch_norm(False, rng))};",
        "last layer (512, 256) @ (256, 65536)",
        f"in float32 {_median_ms(_last_layer('float32', rng))},",
        f"in bfloat16 {_median_ms(_last_layer('bfloat16', rng))}",
    )


if __name__ == "__main__":
    main()
