"""torch.distributed: the collectives (autograd-aware) and the process-group start-up."""

import atexit
import os

import torch
import torch.distributed as dist


def batch_shards():
    """1: each replica's step sees its own shard of the batch only."""
    return 1


def world_size():
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def replica_id():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


class _AllGather(torch.autograd.Function):
    """Concatenation of every process's `x` along `axis`.

    Backward: every process holds the gradient of its own loss with respect to the whole
    gathered tensor; the gradient of the sum of the processes' losses with respect to the
    local shard is the sum of those gradients over the processes, sliced at this shard.
    """

    @staticmethod
    def forward(ctx, x, axis):
        ctx.axis = axis
        ctx.size = x.shape[axis]
        ctx.rank = dist.get_rank()
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=axis)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.narrow(ctx.axis, ctx.rank * ctx.size, ctx.size), None


class _AllReduceSum(torch.autograd.Function):
    """Element-wise sum over the processes; its gradient is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone().contiguous()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone().contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_gather(x, axis):
    return _AllGather.apply(x, axis)


def all_reduce_sum(x):
    return _AllReduceSum.apply(x)


def all_reduce_max(x):
    x = x.detach().clone().contiguous()
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def all_reduce_gradients(gradients):
    """Averages gradients over the processes in place (one flat all-reduce); None stays None."""
    present = [g for g in gradients if g is not None]
    if not present:
        return gradients
    flat = torch.cat([g.reshape(-1) for g in present])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in present:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return gradients


def broadcast_variables(variables, source=0):
    """Copies every variable's value from process `source` to the others (one flat broadcast)."""
    values = [v.value for v in variables]
    if not values:
        return
    with torch.no_grad():
        for dtype in sorted({str(v.dtype) for v in values}):
            group = [v for v in values if str(v.dtype) == dtype]
            flat = torch.cat([v.detach().reshape(-1) for v in group])
            dist.broadcast(flat, src=source)
            offset = 0
            for v in group:
                v.copy_(flat[offset : offset + v.numel()].view_as(v))
                offset += v.numel()


def start(backend=None):
    """Joins the process group that `torchrun` describes in the environment (idempotent)."""
    if dist.is_initialized():
        return
    missing = [
        k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise RuntimeError(
            f"PyTorch data parallelism runs one process per device, started by torchrun, which "
            f"sets {missing}. Start the script with `torchrun --nproc_per_node=N script.py` "
            "(or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT yourself)."
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        # Keras puts tensors on the current CUDA device: one device per process.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    # A process that exits with its group alive can abort in the interpreter's
    # finalisation (gloo's worker threads still hold tensors): "terminate called
    # without an active exception", SIGABRT, and torchrun reports the run as failed.
    atexit.register(_destroy_process_group)


def _destroy_process_group():
    if dist.is_initialized():
        dist.destroy_process_group()
