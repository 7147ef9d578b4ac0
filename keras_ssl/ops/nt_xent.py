"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR."""

from keras import ops

from keras_ssl.ops import distributed
from keras_ssl.ops.normalize import l2_normalize


def _joint_similarities(z_a, z_b, temperature):
    """Cosine similarities of all 2N views over T, self-pairs masked, float32.

    Returns `(logits, positive_mask)`: `logits[i, k] = sim(z_i, z_k) / T` for
    `k != i` and a large negative number on the diagonal; `positive_mask[i, k]`
    is 1 where `k` is the other view of the same image (`k = i +/- N`).
    """
    z = ops.concatenate([ops.convert_to_tensor(z_a), ops.convert_to_tensor(z_b)], axis=0)
    z = ops.cast(z, "float32")
    z = l2_normalize(z, axis=1)
    logits = ops.matmul(z, ops.transpose(z)) / temperature
    two_n = ops.shape(z)[0]
    self_mask = ops.eye(two_n, dtype="bool")
    # -1e9 rather than -inf: exp underflows to exactly 0 and gradients stay finite.
    logits = ops.where(self_mask, ops.cast(-1e9, logits.dtype), logits)
    n = ops.shape(z_a)[0]
    positive_mask = ops.roll(ops.eye(two_n, dtype="float32"), shift=n, axis=1)
    return logits, positive_mask


def _global_similarities(z_a, z_b, temperature):
    """`_joint_similarities` of this replica's 2n anchors against the 2N views of the
    global batch (gathered from every replica, gradients flowing back to the local ones).

    Column layout as on one device with the global batch: first views of replicas
    0..W-1, then second views; this replica's images sit at `replica_id * n`.
    """
    z_local = l2_normalize(ops.cast(ops.concatenate([z_a, z_b], axis=0), "float32"), axis=1)
    n = ops.shape(z_a)[0]
    a_local, b_local = z_local[:n], z_local[n:]
    candidates = ops.concatenate(
        [distributed.all_gather(a_local), distributed.all_gather(b_local)], axis=0
    )
    logits = ops.matmul(z_local, ops.transpose(candidates)) / temperature
    global_n = ops.shape(candidates)[0] // 2
    own = ops.cast(distributed.replica_id(), "int32") * n + ops.arange(n, dtype="int32")
    self_columns = ops.concatenate([own, own + global_n], axis=0)
    positive_columns = ops.concatenate([own + global_n, own], axis=0)
    columns = ops.expand_dims(ops.arange(2 * global_n, dtype="int32"), 0)
    self_mask = ops.equal(ops.expand_dims(self_columns, 1), columns)
    logits = ops.where(self_mask, ops.cast(-1e9, logits.dtype), logits)
    positive_mask = ops.cast(ops.equal(ops.expand_dims(positive_columns, 1), columns), "float32")
    return logits, positive_mask


def _similarities(z_a, z_b, temperature, gather_distributed):
    if gather_distributed and distributed.world_size() > 1:
        return _global_similarities(z_a, z_b, temperature)
    logits, positive_mask = _joint_similarities(z_a, z_b, temperature)
    shard = None
    if not gather_distributed:
        shard = distributed.batch_shard_ids(z_a.shape[0], min_per_device=2)
    if shard is not None:  # JAX DataParallel: keep to the anchor's device's views
        shard = ops.concatenate([shard, shard], axis=0)
        other_device = ops.not_equal(ops.expand_dims(shard, 1), ops.expand_dims(shard, 0))
        logits = ops.where(other_device, ops.cast(-1e9, logits.dtype), logits)
    return logits, positive_mask


def nt_xent_loss(z_a, z_b, temperature=0.5, gather_distributed=True):
    """NT-Xent loss of SimCLR (Chen et al. 2020, "A Simple Framework for
    Contrastive Learning of Visual Representations", eq. 1).

    For the 2N embeddings `z` of N images under two views, with
    `sim(u, v) = u.v / (|u| |v|)` and temperature `T`, the loss of anchor `i`
    whose positive is `j` (the other view of the same image) is

        l(i, j) = -log( exp(sim(z_i, z_j) / T) / sum_{k != i} exp(sim(z_i, z_k) / T) )

    and the loss is the mean of `l` over all 2N anchors, i.e. both
    `l(i, i+N)` and `l(i+N, i)`. The denominator runs over every `k != i`,
    the positive included. The positive is selected by a mask on the full
    2N x 2N similarity matrix, never by re-indexing the matrix after the
    diagonal is removed. Computed in float32 whatever the inputs' dtype.

    Args:
        z_a: `(N, D)` embeddings of the first views.
        z_b: `(N, D)` embeddings of the second views, row `i` the same image
            as row `i` of `z_a`.
        temperature: the temperature `T` (0.5 in the paper's CIFAR-10
            runs, 0.1 for ImageNet with large batches).
        gather_distributed: in data-parallel training, contrast this replica's
            anchors with the views of the whole global batch (gathered from all
            replicas, `keras_ssl.ops.distributed.all_gather`), so that the loss
            and its gradient equal one device's on the global batch; `False` keeps
            the negatives local, each device's anchors contrasted with that device's
            views only (the loss is then the mean of the devices' losses), on every
            engine, JAX's `DataParallel` included (there the rows of `z_a` and `z_b`
            must be in the step's batch order, one per image, as the trainer's views
            are: the devices hold contiguous blocks of them). No effect on one device.

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.ops import nt_xent_loss
    >>> z = np.random.default_rng(0).normal(size=(8, 16)).astype("float32")
    >>> float(nt_xent_loss(z, z + 0.01, temperature=0.5)) < float(nt_xent_loss(z, z[::-1]))
    True
    """
    if len(z_a.shape) != 2 or tuple(z_a.shape) != tuple(z_b.shape):
        raise ValueError(
            "nt_xent_loss expects two (N, D) tensors of the same shape, got "
            f"{tuple(z_a.shape)} and {tuple(z_b.shape)}."
        )
    if z_a.shape[0] is not None and z_a.shape[0] < 2:
        raise ValueError(
            f"NT-Xent needs at least 2 images per batch to have negatives, got {z_a.shape[0]}. "
            "Increase the batch size."
        )
    logits, positive_mask = _similarities(z_a, z_b, temperature, gather_distributed)
    positive_logit = ops.sum(logits * positive_mask, axis=1)
    return ops.mean(ops.logsumexp(logits, axis=1) - positive_logit)


def contrastive_accuracy(z_a, z_b, gather_distributed=True):
    """Fraction of the 2N anchors whose most similar other view is their positive.

    The top-1 accuracy of the NT-Xent classification task: for anchor `i`,
    the argmax of `sim(z_i, z_k)` over `k != i` must be the other view of
    the same image. Gradient-free; a metric, not a loss.

    Args:
        z_a: `(N, D)` embeddings of the first views.
        z_b: `(N, D)` embeddings of the second views.

    Returns:
        A float32 scalar in [0, 1].
    """
    z_a = ops.stop_gradient(ops.convert_to_tensor(z_a))
    z_b = ops.stop_gradient(ops.convert_to_tensor(z_b))
    logits, positive_mask = _similarities(z_a, z_b, 1.0, gather_distributed)
    predicted = ops.argmax(logits, axis=1)
    positive = ops.argmax(positive_mask, axis=1)
    return ops.mean(ops.cast(ops.equal(predicted, positive), "float32"))
