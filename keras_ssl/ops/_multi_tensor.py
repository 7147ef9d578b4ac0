"""In-place updates of many variables at once, for the after-step of EMA teachers and
decoupled weight decay and for batch norm's moving averages, and per-tensor gradient clipping
over many tensors at once.

On PyTorch, eagerly, each update is one `torch._foreach_*` call per dtype, as `torch.optim`
and Keras's own PyTorch optimizers update weights. On the CPU that is one pass over each
tensor instead of an elementwise op per term plus a copy for `assign`; on CUDA the lerp,
whose weight is a tensor (no host sync for a scheduled momentum), takes torch's per-tensor
path. Elsewhere (JAX's stateless step, TensorFlow's graph, a `keras.StatelessScope` on any
backend) each variable is `assign`ed, which XLA fuses into one pass where the step is
compiled. Both read and write the variables' own values: inside a mixed-precision layer
call, an autocast scope would hand out 16-bit copies (and Keras's PyTorch `assign` would
write into such a copy, losing the update).
"""

import keras
from keras import ops
from keras.src.backend.common.stateless_scope import in_stateless_scope
from keras.src.backend.common.variables import AutocastScope

_HALF_DTYPES = ("float16", "bfloat16")


def _in_place(variables):
    return (
        keras.backend.backend() == "torch"
        and not in_stateless_scope()
        and all(isinstance(v, keras.Variable) for v in variables)
    )


def lerp_variables(targets, sources, weight):
    """`target <- (1 - weight) * target + weight * source` for every pair (exactly `target`
    at weight 0 and `source` at weight 1), computed in float32 for 16-bit targets and in
    the target's dtype otherwise, and rounded to the target's dtype once.

    `sources` are variables, tensors or arrays of the targets' shapes; `weight` is a float
    or a scalar tensor.
    """
    with AutocastScope(None):
        _lerp(targets, sources, weight)


def scale_variables(variables, factor):
    """`variable <- variable * factor` for every variable, in each variable's dtype.

    `factor` is a float or a scalar tensor.
    """
    with AutocastScope(None):
        _scale(variables, factor)


def _lerp(targets, sources, weight):
    if not _in_place(targets):
        for target, source in zip(targets, sources, strict=True):
            dtype = "float32" if target.dtype in _HALF_DTYPES else target.dtype
            w = ops.cast(weight, dtype)
            value = ops.cast(target.value, dtype)  # (a cast of the variable stays 16-bit on JAX)
            source = ops.cast(ops.stop_gradient(ops.convert_to_tensor(source)), dtype)
            target.assign(ops.cast((1 - w) * value + w * source, target.dtype))
        return
    import torch

    with torch.no_grad():
        groups = {}
        for target, source in zip(targets, sources, strict=True):
            value = target.value
            values, group_sources = groups.setdefault(value.dtype, ([], []))
            values.append(value)
            wide = value.dtype in (torch.float16, torch.bfloat16)
            source = ops.convert_to_tensor(source).detach()
            group_sources.append(source.float() if wide else source.to(value.dtype))
        for dtype, (values, group_sources) in groups.items():
            if dtype in (torch.float16, torch.bfloat16):
                # In float32 (a 16-bit weight `1 - m` would be off by up to 2**-9 of itself).
                wide = [value.float() for value in values]
                w = ops.cast(weight, "float32")
                torch._foreach_lerp_(wide, group_sources, [w] * len(wide))
                torch._foreach_copy_(values, wide)
            elif isinstance(weight, (int, float)):
                # A Python number is used as is: torch rounds it to these dtypes exactly as a
                # cast would, and no number becomes a tensor (a host-to-device copy on CUDA).
                torch._foreach_lerp_(values, group_sources, float(weight))
            else:
                w = ops.cast(weight, dtype)
                torch._foreach_lerp_(values, group_sources, [w] * len(values))


def _scale(variables, factor):
    if not _in_place(variables):
        for variable in variables:
            variable.assign(variable * ops.cast(factor, variable.dtype))
        return
    import torch

    with torch.no_grad():
        groups = {}
        for variable in variables:
            groups.setdefault(variable.value.dtype, []).append(variable.value)
        for dtype, values in groups.items():
            torch._foreach_mul_(values, ops.cast(factor, dtype))


def clip_each_by_norm(tensors, clip_norm):
    """Each tensor `g` as `g * c / max(||g||_2, c)`: unchanged where its L2 norm is at most
    `c = clip_norm`, scaled down to norm `c` where it is larger. This is Keras's optimizer
    `clipnorm` and DINO's per-parameter gradient clipping (Caron et al., 2021). `None`
    entries pass through; a zero tensor stays zero, a non-finite norm gives NaN (as Keras).
    Norms are taken in float32 on every backend (a float16 norm overflows past 65,504).

    On PyTorch the norms are one `torch._foreach_norm` and the scaling one
    `torch._foreach_mul` per dtype, with `c` a Python float throughout: no value goes
    between host and device, where Keras's own clipping turns `c` into a tensor twice
    per variable (on CUDA each is a copy that waits for the device).

    Args:
        tensors: list of tensors (gradients) or `None`.
        clip_norm: positive float.

    Returns:
        A new list of the clipped tensors (the inputs are left as they were).
    """
    present = [i for i, t in enumerate(tensors) if t is not None]
    clipped = list(tensors)
    if keras.backend.backend() != "torch":
        for i in present:
            g = ops.convert_to_tensor(tensors[i])
            norm = ops.sqrt(ops.sum(ops.square(ops.cast(g, "float32"))))
            clipped[i] = g * ops.cast(clip_norm / ops.maximum(norm, clip_norm), g.dtype)
        return clipped
    import torch

    with torch.no_grad():
        groups = {}
        for i in present:
            g = ops.convert_to_tensor(tensors[i])
            indices, group = groups.setdefault((g.device, g.dtype), ([], []))
            indices.append(i)
            group.append(g)
        for (_, dtype), (indices, group) in groups.items():
            norms = torch.stack(torch._foreach_norm(group, dtype=torch.float32))
            scales = (clip_norm / torch.clamp(norms, min=clip_norm)).to(dtype)
            for i, g in zip(indices, torch._foreach_mul(group, list(scales.unbind())), strict=True):
                clipped[i] = g
    return clipped
