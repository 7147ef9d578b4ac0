"""The KoLeo differential-entropy regulariser of DINOv2."""

from keras import ops

from keras_ssl.ops import distributed
from keras_ssl.ops.normalize import l2_normalize


def koleo_loss(embeddings, eps=1e-8, gather_distributed=True):
    """KoLeo regulariser (Sablayrolles et al. 2019, "Spreading vectors for
    similarity search", Sec. 4; weight 0.1 on the class tokens in DINOv2).

    The Kozachenko-Leonenko differential entropy estimator: with the
    L2-normalised embeddings `x_i` of a batch of `n` and
    `d_i = min_{j != i} |x_i - x_j|` the distance to the nearest other
    embedding,

        L_koleo = -1/n * sum_i log(d_i + eps)

    Minimising it spreads the embeddings uniformly on the sphere. The nearest
    neighbour is chosen by the largest inner product (as DINOv2) and `d_i`
    is computed from the difference vector (accurate for close pairs);
    duplicate embeddings give `-log(eps)` and finite gradients. Computed in
    float32 whatever the inputs' dtype.

    Args:
        embeddings: `(n, D)` embeddings, `n >= 2`.
        eps: added to the distances before the log.
        gather_distributed: in data-parallel training, look for each embedding's
            nearest neighbour among the embeddings of the whole global batch
            (gathered from every replica, gradients flowing back), so that the loss
            equals one device's on the global batch; `False` keeps the search within
            each device's samples (DINOv2's code), on every engine, JAX's
            `DataParallel` included (there the rows must be in the step's batch
            order, one per image, e.g. one view's embeddings, not two views
            concatenated: the devices hold contiguous blocks of them). No effect on
            one device.

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.ops import koleo_loss
    >>> x = np.array([[1.0, 0.0], [-1.0, 0.0]], "float32")
    >>> round(float(koleo_loss(x)), 4)  # -log(2)
    -0.6931
    """
    x = ops.convert_to_tensor(embeddings)
    if len(x.shape) != 2:
        raise ValueError(f"koleo_loss expects (n, D) embeddings, got {tuple(x.shape)}.")
    if x.shape[0] is not None and x.shape[0] < 2:
        raise ValueError(f"koleo_loss needs at least 2 embeddings, got {x.shape[0]}.")
    x = ops.cast(x, "float32")
    x = l2_normalize(x, axis=1)
    if gather_distributed and distributed.world_size() > 1:
        candidates = distributed.all_gather(x)
        n = ops.shape(x)[0]
        own = ops.cast(distributed.replica_id(), "int32") * n + ops.arange(n, dtype="int32")
        columns = ops.arange(ops.shape(candidates)[0], dtype="int32")
        excluded = ops.equal(ops.expand_dims(own, 1), ops.expand_dims(columns, 0))
    else:
        candidates = x
        excluded = ops.eye(ops.shape(x)[0], dtype="bool")
        shard = None
        if not gather_distributed:
            shard = distributed.batch_shard_ids(x.shape[0], min_per_device=2)
        if shard is not None:  # JAX DataParallel: neighbours on the same device only
            other_device = ops.not_equal(ops.expand_dims(shard, 1), ops.expand_dims(shard, 0))
            excluded = ops.logical_or(excluded, other_device)
    similarity = ops.stop_gradient(ops.matmul(x, ops.transpose(candidates)))
    similarity = ops.where(excluded, -3.0, similarity)
    neighbour = ops.take(candidates, ops.argmax(similarity, axis=1), axis=0)
    squared = ops.sum(ops.square(x - neighbour), axis=1)
    # The floor keeps sqrt's gradient finite for duplicates; it is far below eps.
    distance = ops.sqrt(ops.maximum(squared, 1e-24))
    return -ops.mean(ops.log(distance + eps))
