"""How many Python numbers PyTorch code turns into tensors (on CUDA, each is a host copy)."""

import contextlib


@contextlib.contextmanager
def count_numbers_made_tensors():
    """Counts the Python ints and floats passed to `torch.as_tensor` inside the block.

    Yields a one-element list whose item is the count so far.
    """
    import torch

    count = [0]
    as_tensor = torch.as_tensor

    def counting(data, *args, **kwargs):
        count[0] += isinstance(data, (float, int))
        return as_tensor(data, *args, **kwargs)

    torch.as_tensor = counting
    try:
        yield count
    finally:
        torch.as_tensor = as_tensor
