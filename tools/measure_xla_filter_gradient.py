"""A 3x3 convolution's filter gradient on JAX's CPU backend: XLA's own against JAX-level
rewrites, with the forward pass, the input gradient and the GEMM behind the rewrites.

The layer is a ResNet-18 CIFAR stage-1 convolution of the speed benchmark (256 x 32 x 32 x 64
-> 64). Each rewrite is checked against XLA's filter gradient before it is timed (medians of
5). XLA:CPU runs under keras_ssl's flag (`keras_ssl/_xla_cpu.py`).

    python tools/measure_xla_filter_gradient.py

The note's figures, two runs (2-core CPU): XLA's filter gradient 143-161 ms (120-135
GFLOP/s); nine shifted GEMMs 440-465 ms; the same as einsums, batched or chunked products
376-770 ms; a forward convolution with the batch and feature axes swapped 146-153 ms (the
kernel XLA already uses); forward 80-94 ms, input gradient 80-91 ms; the `(C, N) x (N, O)`
GEMM at N = 262,144 33-34 ms with the transposed operand, 15-18 ms from a contiguous one.
Later (2026-11-30): the filter gradient keeps both cores busy (cpu/wall about 1.9, as the
forward pass), and XLA's own filter gradient on 2 or 8 slices of the batch is no faster.
Against torch's oneDNN on the same layer (2026-12-02, two runs, the last three lines):
forward 1.19x and 1.42x torch's time, forward + filter gradient 1.97x and 1.52x, forward +
both gradients 1.61x and 1.37x (XLA 319 and 293 ms, torch 199 and 213 ms): the speed
table's JAX ResNet ratios (0.66-0.80x) in one layer.
"""

import importlib
import os
import time

os.environ["KERAS_BACKEND"] = "jax"
importlib.import_module("keras_ssl")  # sets XLA:CPU's flag before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

B, H, W, C, OUT = 256, 32, 32, 64, 64
LAYOUT = ("NHWC", "HWIO", "NHWC")
FLOPS = 2 * B * H * W * C * OUT * 9


def _conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=LAYOUT)


def _shifted(x):
    """The nine `(B, H, W, C)` windows of the zero-padded input, row-major over (kh, kw)."""
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [padded[:, i : i + H, j : j + W, :] for i in range(3) for j in range(3)]


def xla_filter_gradient(x, dy, kernel):
    return jax.vjp(lambda k: _conv(x, k), kernel)[1](dy)[0]


def nine_gemms(x, dy, kernel):
    d = dy.reshape(-1, OUT)
    return jnp.stack([w.reshape(-1, C).T @ d for w in _shifted(x)]).reshape(3, 3, C, OUT)


def nine_einsums(x, dy, kernel):
    rows = [jnp.einsum("bhwc,bhwo->co", w, dy) for w in _shifted(x)]
    return jnp.stack(rows).reshape(3, 3, C, OUT)


def chunked(parts):
    def filter_gradient(x, dy, kernel):
        d = dy.reshape(parts, -1, OUT)
        rows = [
            jax.lax.dot_general(w.reshape(parts, -1, C), d, (((1,), (1,)), ((0,), (0,)))).sum(0)
            for w in _shifted(x)
        ]
        return jnp.stack(rows).reshape(3, 3, C, OUT)

    return filter_gradient


def batch_split(parts):
    """XLA's filter gradient on `parts` slices of the batch, summed."""

    def filter_gradient(x, dy, kernel):
        pairs = zip(jnp.split(x, parts), jnp.split(dy, parts), strict=True)
        return sum(xla_filter_gradient(xs, ds, kernel) for xs, ds in pairs)

    return filter_gradient


def swapped_forward_conv(x, dy, kernel):
    # The input channels as the batch, the images as the features, dY as the kernel.
    lhs = jnp.transpose(x, (3, 1, 2, 0))
    rhs = jnp.transpose(dy, (1, 2, 0, 3))
    out = jax.lax.conv_general_dilated(lhs, rhs, (1, 1), ((1, 1), (1, 1)), dimension_numbers=LAYOUT)
    return jnp.transpose(out, (1, 2, 0, 3))


def _timed(fn, *args):
    """Median wall time in ms of 5 calls, and that call's process CPU time / wall time
    (about 2 when XLA keeps both cores busy, 1 when it runs on one thread)."""
    jax.block_until_ready(fn(*args))
    runs = []
    for _ in range(5):
        start, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        wall = time.perf_counter() - start
        runs.append((wall, (time.process_time() - cpu) / wall))
    wall, busy = sorted(runs)[2]
    return 1e3 * wall, busy


def _median_ms(fn, *args):
    return _timed(fn, *args)[0]


def main():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(B, H, W, C)).astype("float32"))
    dy = jnp.asarray(rng.normal(size=(B, H, W, OUT)).astype("float32"))
    kernel = jnp.asarray(rng.normal(0, 0.05, size=(3, 3, C, OUT)).astype("float32"))
    reference = np.asarray(jax.jit(xla_filter_gradient)(x, dy, kernel))
    candidates = {
        "XLA's filter gradient": xla_filter_gradient,
        "nine shifted GEMMs": nine_gemms,
        "nine einsums": nine_einsums,
        "batched products, 2 chunks": chunked(2),
        "batched products, 256 chunks": chunked(256),
        "XLA's filter gradient on 2 batch slices": batch_split(2),
        "XLA's filter gradient on 8 batch slices": batch_split(8),
        "forward conv, batch and features swapped": swapped_forward_conv,
    }
    for name, fn in candidates.items():
        compiled = jax.jit(fn)
        error = np.abs(np.asarray(compiled(x, dy, kernel)) - reference).max()
        assert error <= 1e-5 * np.abs(reference).max(), (name, error)
        ms, busy = _timed(compiled, x, dy, kernel)
        print(f"{name}: {ms:.1f} ms, {FLOPS / ms / 1e6:.0f} GFLOP/s, cpu/wall {busy:.2f}")
    forward = jax.jit(_conv)
    input_gradient = jax.jit(lambda x, dy: jax.vjp(lambda v: _conv(v, kernel), x)[1](dy)[0])
    ms, busy = _timed(forward, x, kernel)
    print(f"forward: {ms:.1f} ms, cpu/wall {busy:.2f}")
    ms, busy = _timed(input_gradient, x, dy)
    print(f"input gradient: {ms:.1f} ms, cpu/wall {busy:.2f}")
    a, b = x.reshape(-1, C), dy.reshape(-1, OUT)
    a_t = jnp.asarray(np.ascontiguousarray(np.asarray(a).T))
    transposed = _median_ms(jax.jit(lambda a, b: a.T @ b), a, b)
    contiguous = _median_ms(jax.jit(jnp.matmul), a_t, b)
    print(f"GEMM (C, N) x (N, O), transposed operand: {transposed:.1f} ms")
    print(f"GEMM (C, N) x (N, O), contiguous operand: {contiguous:.1f} ms")
    _against_torch(x, dy, kernel)


def _against_torch(x, dy, kernel):
    """The same layer's forward pass, + the filter gradient, + both gradients: XLA against
    torch's oneDNN (channels-last, 2 threads, as lightly runs it in the speed benchmark)."""
    import torch

    torch.set_num_threads(2)

    def both(x, dy, kernel):  # y is returned: XLA would drop an unused forward pass
        y, pullback = jax.vjp(_conv, x, kernel)
        return y, pullback(dy)

    def with_filter_gradient(x, dy, kernel):
        y, pullback = jax.vjp(lambda k: _conv(x, k), kernel)
        return y, pullback(dy)

    xla = {
        "forward": _median_ms(jax.jit(lambda x, dy, k: _conv(x, k)), x, dy, kernel),
        "forward + filter gradient": _median_ms(jax.jit(with_filter_gradient), x, dy, kernel),
        "forward + both gradients": _median_ms(jax.jit(both), x, dy, kernel),
    }

    def as_torch(a):  # NHWC memory seen as NCHW: torch's channels-last
        return torch.from_numpy(np.array(a)).permute(0, 3, 1, 2)

    tx, tdy = as_torch(x), as_torch(dy)
    tk = torch.from_numpy(np.asarray(kernel)).permute(3, 2, 0, 1).contiguous()
    tk = tk.to(memory_format=torch.channels_last)

    def run(grad_input, grad_kernel):
        xs, ks = tx.requires_grad_(grad_input), tk.requires_grad_(grad_kernel)
        y = torch.nn.functional.conv2d(xs, ks, padding=1)
        wanted = [t for t in (xs, ks) if t.requires_grad]
        if wanted:
            torch.autograd.grad(y, wanted, tdy)

    def torch_ms(grad_input, grad_kernel):
        run(grad_input, grad_kernel)
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            run(grad_input, grad_kernel)
            runs.append(time.perf_counter() - start)
        return 1e3 * sorted(runs)[2]

    torch_times = {
        "forward": torch_ms(False, False),
        "forward + filter gradient": torch_ms(False, True),
        "forward + both gradients": torch_ms(True, True),
    }
    for name, ms in xla.items():
        theirs = torch_times[name]
        print(f"{name}: XLA {ms:.1f} ms, torch {theirs:.1f} ms ({ms / theirs:.2f}x)")


if __name__ == "__main__":
    main()
