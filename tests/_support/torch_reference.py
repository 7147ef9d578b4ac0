"""Import the torch reference libraries (torchvision, timm, transformers) for parity tests.

The CPU build of torch 2.13 that this project pins cannot load torchvision's compiled
operators, so ``import torchvision`` fails on the missing ``torchvision::nms`` schema. The
parity tests only need torchvision's models, not its detection ops, so the two operator
schemas are declared (without kernels) before the import. ``pytest.importorskip`` is not
used on purpose: a missing reference library is a broken test environment, not a skip.
"""

import functools


@functools.cache
def _declare_torchvision_ops():
    import torch

    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
    return library  # cached, so the definitions stay registered


def import_torchvision():
    """``torchvision`` with its models importable beside the CPU build of torch."""
    try:
        import torchvision
    except RuntimeError:
        _declare_torchvision_ops()
        import torchvision
    return torchvision


def import_timm():
    import_torchvision()
    import timm

    return timm
