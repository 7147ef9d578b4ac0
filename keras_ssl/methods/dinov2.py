"""DINOv2 (Oquab et al. 2023)."""

import math

import keras
import numpy as np
from keras import ops

from keras_ssl.layers.dino_head import DINOHead
from keras_ssl.methods.dino import DINO
from keras_ssl.ops import distributed
from keras_ssl.ops.dino import dino_center_update
from keras_ssl.ops.ibot import ibot_patch_loss_from_rows, masked_patch_rows
from keras_ssl.ops.koleo import koleo_loss
from keras_ssl.ops.masking import block_masks
from keras_ssl.ops.sinkhorn_knopp import sinkhorn_knopp
from keras_ssl.optimizers.layer_decay import vit_layer_decay

_CENTERINGS = ("centering", "sinkhorn_knopp")


def _cross_entropy_pairs(student_logits, teacher_probs, student_temperature):
    """DINO's pair-averaged cross-entropy, with the teacher given as probabilities."""
    log_probs = [
        ops.log_softmax(ops.cast(s, "float32") / student_temperature, axis=-1)
        for s in student_logits
    ]
    pairs = [(i, v) for i in range(len(teacher_probs)) for v in range(len(log_probs)) if v != i]
    total = 0.0
    for i, v in pairs:
        total = total + ops.mean(-ops.sum(teacher_probs[i] * log_probs[v], axis=-1))
    return total / len(pairs)


@keras.saving.register_keras_serializable(package="keras_ssl")
class DINOv2(DINO):
    """DINOv2: "DINOv2: Learning Robust Visual Features without Supervision" (Oquab et
    al., TMLR 2024), DINO + iBOT masked image modelling + KoLeo, for ViT backbones.

    Everything of `DINO` (multi-crop, EMA teacher, teacher-temperature warm-up, weight
    decay schedule, last layer frozen in the first epoch) plus:

    - **iBOT masked patch loss** (`keras_ssl.ops.ibot_patch_loss`): of the `2N` global
      crops of a batch, `floor(mask_probability * 2N)` chosen at random are masked (as
      DINOv2's collate function), with mask ratios spread over `mask_ratio`, in
      rectangular blocks (`keras_ssl.ops.block_masks`, BEiT's block-wise masking, as
      DINOv2's `MaskingGenerator`). The student sees the masked global crops (the ViT's
      `mask_token` replaces the masked patch embeddings), the teacher the unmasked ones;
      a separate `patch_head` (a second `DINOHead`, `ibot_separate_head=True`) maps the
      patch tokens; the loss is the cross-entropy between the teacher's and the student's
      patch distributions of the masked patches, averaged over each crop's masked patches,
      then over all `2N` global crops (unmasked ones add 0), as DINOv2. As in DINOv2, the
      student and teacher patch heads run on the masked patch tokens only, gathered
      (`keras_ssl.ops.masked_patch_rows`) into a buffer of static size
      `M = floor(mask_probability * 2N) * floor(mask_ratio[1] * P)` rows (`P` patches a
      crop; `2N` counts the global crops of the global batch in data-parallel training,
      at most the replica's own), which bounds the masked patches of every draw; the
      padding rows count nowhere. Masks passed to `compute_ssl_loss_with_masks` get a
      buffer of all `2N * P` rows.
    - **KoLeo** (`keras_ssl.ops.koleo_loss`) on the student backbone's CLS features of
      each global crop (L2-normalised), summed over the 2 global crops as DINOv2.
    - **Teacher centring** by Sinkhorn-Knopp (`centering="sinkhorn_knopp"`, 3 iterations,
      the teacher temperature; the default, as DINOv2) or by DINO's running centres
      (`centering="centering"`; the CLS centre `center` and a separate `patch_center`,
      both with momentum `center_momentum`). Sinkhorn-Knopp is applied to the teacher's
      CLS outputs of the global crops and, separately, to its outputs of the masked
      patches; the patch centre follows the mean teacher output of the masked patches
      (over the global batch in both cases), as DINOv2.

    DINOv2's own multi-crop is `keras_ssl.augment.DINOMultiCrop.dinov2()` (DINO's
    pipeline with the crop areas 0.32-1 and 0.05-0.32).

    The total loss is `dino_loss + ibot_loss_weight * ibot + koleo_loss_weight * koleo`;
    the logged `dino_loss`, `ibot_loss` and `koleo_loss` are the weighted terms, so they
    add up to `loss`. Local crops get the CLS-only DINO loss (no masks). The masks come
    from the model's own `seed_generator` (saved state, traced correctly under `jax.jit`).

    Args:
        backbone: a `keras_ssl.backbones.ViT` (anything with `forward_features(images,
            masks=None, training)` returning `{"cls", "patches"}`), built with its mask
            token (`use_mask_token=True`, the default).
        augmenter, output_dim, hidden_dim, bottleneck_dim, norm_last_layer, use_bn_in_head,
            head_layers, student_temperature, warmup_teacher_temperature, teacher_temperature,
            warmup_teacher_temperature_epochs, center_momentum, weight_decay,
            final_weight_decay, freeze_last_layer_epochs: as `DINO` (DINOv2 defaults: 65536
            prototypes, `tau_t` 0.04 -> 0.07 over 30 epochs, warmed up by step as in
            DINOv2's code, weight decay 0.04 -> 0.2).
        momentum, final_momentum: teacher EMA momentum (0.992 -> 1).
        centering: `"sinkhorn_knopp"` (default) or `"centering"`.
        sinkhorn_iterations: Sinkhorn-Knopp iterations (3).
        ibot_loss_weight: weight of the masked patch loss (1.0).
        koleo_loss_weight: weight of KoLeo (0.1).
        mask_ratio: `(min, max)` fraction of masked patches of a masked crop (0.1, 0.5).
        mask_probability: fraction of global crops masked (0.5).
        ibot_separate_head: a separate patch head (True); False shares the CLS head.
        ibot_output_dim, ibot_hidden_dim, ibot_bottleneck_dim: the patch head's widths
            (`None`: as the CLS head).
        layerwise_decay: layer-wise learning-rate decay of the ViT (0.9;
            `keras_ssl.optimizers.vit_layer_decay`; 1.0 for none). The heads train at the
            optimizer's rate.
        patch_embed_lr_multiplier: extra learning-rate factor of the patch embedding (0.2).
        seed: seed of the mask sampler.

    Example:

    ```python
    import keras, keras_ssl
    model = keras_ssl.DINOv2(
        keras_ssl.backbones.ViT(patch_size=4, hidden_dim=64, depth=2, num_heads=2,
                                input_channels=1, pretrain_image_size=28,
                                layer_scale_init=1.0),  # 1e-5 (ViT-g's) stalls a tiny ViT
        augmenter=keras_ssl.augment.DINOMultiCrop.small_images(28, num_local_crops=2),
        output_dim=1024, hidden_dim=256, bottleneck_dim=64,
    )
    model.compile(optimizer=keras.optimizers.AdamW(5e-4, weight_decay=0.0, clipnorm=3.0))
    ```
    """

    metric_names = ("dino_loss", "ibot_loss", "koleo_loss")
    min_batch_size = 2  # KoLeo needs a nearest neighbour in the batch

    def __init__(
        self,
        backbone,
        augmenter=None,
        momentum=0.992,
        final_momentum=1.0,
        final_weight_decay=0.2,
        centering="sinkhorn_knopp",
        sinkhorn_iterations=3,
        ibot_loss_weight=1.0,
        koleo_loss_weight=0.1,
        mask_ratio=(0.1, 0.5),
        mask_probability=0.5,
        ibot_separate_head=True,
        ibot_output_dim=None,
        ibot_hidden_dim=None,
        ibot_bottleneck_dim=None,
        layerwise_decay=0.9,
        patch_embed_lr_multiplier=0.2,
        seed=None,
        **kwargs,
    ):
        if not callable(getattr(backbone, "forward_features", None)):
            raise TypeError(
                "DINOv2 needs a ViT backbone with `forward_features(images, masks=None, "
                "training)` returning CLS and patch tokens (e.g. keras_ssl.backbones.ViT) for "
                f"its masked patch loss; got {type(backbone).__name__}. Use keras_ssl.DINO for "
                "ResNets and other backbones without patch tokens."
            )
        if not getattr(backbone, "use_mask_token", True):
            raise ValueError(
                "DINOv2 masks the student's patches with the ViT's mask token: build the ViT "
                "with use_mask_token=True."
            )
        if centering not in _CENTERINGS:
            raise ValueError(f"`centering` must be one of {_CENTERINGS}, got {centering!r}.")
        mask_ratio = tuple(float(r) for r in mask_ratio)
        if len(mask_ratio) != 2 or not 0.0 <= mask_ratio[0] <= mask_ratio[1] <= 1.0:
            raise ValueError(f"`mask_ratio` must be (min, max) in [0, 1], got {mask_ratio}.")
        if not 0.0 <= mask_probability <= 1.0:
            raise ValueError(f"`mask_probability` must be in [0, 1], got {mask_probability}.")
        super().__init__(
            backbone,
            augmenter=augmenter,
            momentum=momentum,
            final_momentum=final_momentum,
            final_weight_decay=final_weight_decay,
            **kwargs,
        )
        self.centering = centering
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.ibot_loss_weight = float(ibot_loss_weight)
        self.koleo_loss_weight = float(koleo_loss_weight)
        self.mask_ratio = mask_ratio
        self.mask_probability = float(mask_probability)
        self.ibot_separate_head = bool(ibot_separate_head)
        self.ibot_output_dim = ibot_output_dim
        self.ibot_hidden_dim = ibot_hidden_dim
        self.ibot_bottleneck_dim = ibot_bottleneck_dim
        self.layerwise_decay = float(layerwise_decay)
        self.patch_embed_lr_multiplier = float(patch_embed_lr_multiplier)
        self.seed = seed
        if self.ibot_separate_head:
            self.patch_head = DINOHead(
                output_dim=ibot_output_dim or self.output_dim,
                hidden_dim=ibot_hidden_dim or self.hidden_dim,
                bottleneck_dim=ibot_bottleneck_dim or self.bottleneck_dim,
                use_bn=self.use_bn_in_head,
                norm_last_layer=self.norm_last_layer,
                num_layers=self.head_layers,
                name="patch_head",
            )
            self.patch_head.build((None, self.feature_dim))
            self.teacher_patch_head = self.make_teacher(self.patch_head, (None, self.feature_dim))
        else:
            self.patch_head = self.head
            self.teacher_patch_head = self.teacher_head
        self.patch_center = self.add_weight(
            name="patch_center",
            shape=(1, self.patch_head.output_dim),
            initializer="zeros",
            trainable=False,
        )
        self.seed_generator = keras.random.SeedGenerator(seed, name="mask_seed_generator")

    # ---- masks ---------------------------------------------------------------------------
    def sample_masks(self, num_images, grid_shape):
        """Boolean `(num_images, h * w)` iBOT masks of an `(h, w)` patch grid, True where
        a patch is masked, as DINOv2's collate function draws them.

        `floor(mask_probability * num_images)` images, chosen at random, are masked; the
        `i`-th of those `n` gets a ratio uniform in the `i`-th of `n` equal slices of
        `mask_ratio` (so the ratios spread over the range), and `floor(ratio * h * w)`
        patches masked in blocks (`keras_ssl.ops.block_masks`, blocks of at most half
        the patches); the other images none. Draws from `seed_generator`.
        """
        height, width = (int(d) for d in grid_shape)
        num_patches = height * width
        if self.mask_probability == 0:
            return ops.zeros((num_images, num_patches), dtype="bool")
        num_masked_images = ops.cast(self._num_masked_images(num_images), "float32")
        noise = keras.random.uniform((2, num_images), seed=self.seed_generator)
        rank = ops.cast(ops.argsort(ops.argsort(noise[0])), "float32")
        lo, hi = self.mask_ratio
        slice_width = (hi - lo) / ops.maximum(num_masked_images, 1.0)
        ratio = lo + (rank + noise[1]) * slice_width
        # ratio < hi; the clip only guards float32 rounding, so that no mask exceeds the
        # bound `_masked_rows_bound` sizes the patch heads' buffer with.
        target = ops.minimum(ops.floor(ratio * num_patches), self._max_masked_patches(num_patches))
        target = ops.where(rank < num_masked_images, target, 0.0)
        return block_masks(
            target,
            (height, width),
            seed=self.seed_generator,
            max_block_patches=0.5 * num_patches,
        )

    def _num_masked_images(self, num_images):
        """`floor(mask_probability * num_images)` in float32, as a Python int for an int
        `num_images`, else a float32 tensor (TensorFlow graphs retraced with a relaxed batch
        size); the same value either way."""
        if isinstance(num_images, (int, np.integer)):
            return int(np.floor(np.float32(self.mask_probability) * np.float32(num_images)))
        return ops.floor(self.mask_probability * ops.cast(num_images, "float32"))

    def _max_masked_patches(self, num_patches):
        """The most patches `sample_masks` masks in one image: `floor(mask_ratio[1] * P)`."""
        return int(math.floor(self.mask_ratio[1] * num_patches))

    def _masked_rows_bound(self, num_images, num_patches):
        """The most masked patches of this replica's `num_images` global crops that
        `_sample_replica_masks` can draw: (masked crops, counted in the global batch, at
        most `num_images`) x `_max_masked_patches`; at least 1 (a static-size buffer)."""
        if self.mask_probability == 0:
            return 1
        world = distributed.world_size()
        per_image = self._max_masked_patches(num_patches)
        masked = self._num_masked_images(num_images * world)
        if isinstance(masked, int):
            return max(1, min(masked, int(num_images)) * per_image)
        masked = ops.minimum(masked, ops.cast(num_images, "float32"))
        return ops.cast(ops.maximum(masked * per_image, 1.0), "int32")

    def _sample_replica_masks(self, num_images, grid_shape):
        """`sample_masks` for this replica's `num_images` global crops. In data-parallel
        training every replica (same seed state) draws the masks of the global batch and
        keeps its own rows, so the masks are the single-device ones."""
        world = distributed.world_size()
        if world == 1:
            return self.sample_masks(num_images, grid_shape)
        n = num_images // 2
        masks = self.sample_masks(num_images * world, grid_shape)
        own = ops.cast(distributed.replica_id(), "int32") * n + ops.arange(n, dtype="int32")
        rows = ops.concatenate([own, own + n * world], axis=0)  # first views, then second
        return ops.take(masks, rows, axis=0)

    def _patch_grid(self, view):
        patch = int(self.backbone.patch_size)
        return int(view.shape[1]) // patch, int(view.shape[2]) // patch

    # ---- teacher targets -----------------------------------------------------------------
    def _teacher_temperature_warmup(self):
        """`(step, warm-up steps)`: DINOv2 warms `tau_t` up by step, as the linspace
        warm-up of its `CosineScheduler` (DINO does it by epoch)."""
        steps = self.epochs_to_steps(self.warmup_teacher_temperature_epochs)
        return self.steps_taken(), ops.maximum(steps, 1.0)

    def teacher_probabilities(self, logits, center, temperature, training, valid=None):
        """Teacher distributions of `(B, K)` logits: Sinkhorn-Knopp, or centred + sharpened
        with `center` updated (in training); over the `valid` rows only when given (a
        boolean `(B,)`, False for padding)."""
        if self.centering == "sinkhorn_knopp":
            if distributed.world_size() == 1:
                return sinkhorn_knopp(
                    logits, temperature, num_iterations=self.sinkhorn_iterations, valid=valid
                )
            return sinkhorn_knopp(  # over the global batch
                logits,
                temperature,
                num_iterations=self.sinkhorn_iterations,
                reduce_sum=distributed.all_reduce_sum,
                reduce_max=distributed.all_reduce_max,
                valid=valid,
            )
        logits = ops.cast(ops.stop_gradient(logits), "float32")
        probs = ops.softmax((logits - ops.cast(center, "float32")) / temperature, axis=-1)
        if training:
            center.assign(
                dino_center_update(
                    center,
                    logits,
                    self.center_momentum,
                    reduce_mean=distributed.global_batch_mean,
                    valid=valid,
                )
            )
        return probs

    # ---- the step ------------------------------------------------------------------------
    def compute_ssl_loss(self, views, training=True):
        return self.compute_ssl_loss_with_masks(views, None, training=training)

    def compute_ssl_loss_with_masks(self, views, masks=None, training=True):
        """`compute_ssl_loss` with given `(2N, P)` masks of the two global crops (concatenated)
        or, with `masks=None`, masks from `sample_masks`. The patch heads run on the masked
        patches gathered into `_masked_rows_bound` rows (all `2N * P` rows for given masks)."""
        if len(views) < 2:
            raise ValueError(
                f"DINOv2 takes 2 global views (then local ones) per image, got {len(views)}."
            )
        if tuple(views[0].shape[1:]) != tuple(views[1].shape[1:]):
            raise ValueError("DINOv2's two global views must have the same size.")
        globals_ = ops.concatenate(views[:2], axis=0)
        grid = self._patch_grid(views[0])
        num_patches = grid[0] * grid[1]
        num_images = ops.shape(globals_)[0]
        if masks is None:
            masks = self._sample_replica_masks(num_images, grid)
            num_rows = self._masked_rows_bound(num_images, num_patches)
        else:
            masks = ops.convert_to_tensor(masks)
            if tuple(masks.shape[1:]) != (num_patches,):
                raise ValueError(
                    f"DINOv2 expects masks of shape (2N, {num_patches}) for the concatenated "
                    f"global views ({grid[0]} x {grid[1]} patches), got {tuple(masks.shape)}."
                )
            num_rows = num_images * num_patches
        # The masked patch tokens (then padding), as rows of the flattened (2N * P) tokens.
        rows, row_weights = masked_patch_rows(masks, num_rows)
        masked_rows = row_weights > 0

        # Student: masked global crops (CLS + patch tokens), local crops (CLS only).
        student = self.backbone.forward_features(globals_, masks=masks, training=training)
        global_cls = student["cls"]
        local_cls = self.encode_views(
            lambda x, training: self.backbone.forward_features(x, training=training)["cls"],
            views[2:],
            training=training,
        )
        cls_logits = self.head(ops.concatenate([global_cls, *local_cls], axis=0), training=training)
        student_logits = ops.split(cls_logits, len(views), axis=0)
        patches = student["patches"]
        dim = patches.shape[-1]
        patches = ops.take(ops.reshape(patches, (-1, dim)), rows, axis=0)
        patch_logits = self.patch_head(patches, training=training, valid=masked_rows)

        # Teacher: unmasked global crops.
        teacher = self.teacher_backbone.forward_features(globals_, training=training)
        teacher_cls = ops.stop_gradient(self.teacher_head(teacher["cls"]))
        teacher_patches = ops.take(ops.reshape(teacher["patches"], (-1, dim)), rows, axis=0)
        teacher_patches = ops.stop_gradient(self.teacher_patch_head(teacher_patches))
        temperature = self.current_teacher_temperature()
        cls_probs = self.teacher_probabilities(teacher_cls, self.center, temperature, training)
        patch_probs = self.teacher_probabilities(
            teacher_patches, self.patch_center, temperature, training, valid=masked_rows
        )

        dino = _cross_entropy_pairs(
            list(student_logits), ops.split(cls_probs, 2, axis=0), self.student_temperature
        )
        ibot = self.ibot_loss_weight * ibot_patch_loss_from_rows(
            patch_logits,
            patch_probs,
            row_weights,
            num_images,
            student_temperature=self.student_temperature,
        )
        koleo = self.koleo_loss_weight * sum(
            koleo_loss(c) for c in ops.split(global_cls, 2, axis=0)
        )
        loss = dino + ibot + koleo
        return loss, {"dino_loss": dino, "ibot_loss": ibot, "koleo_loss": koleo}

    # ---- DINO hooks ----------------------------------------------------------------------
    def teacher_student_pairs(self):
        pairs = super().teacher_student_pairs()
        if self.ibot_separate_head:
            pairs.append((self.teacher_patch_head, self.patch_head))
        return pairs

    def last_layer_variables(self):
        variables = super().last_layer_variables()
        if self.ibot_separate_head:
            variables += list(self.patch_head.last_layer_variables)
        return variables

    def learning_rate_multipliers(self):
        return vit_layer_decay(self.backbone, self.layerwise_decay, self.patch_embed_lr_multiplier)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "centering": self.centering,
                "sinkhorn_iterations": self.sinkhorn_iterations,
                "ibot_loss_weight": self.ibot_loss_weight,
                "koleo_loss_weight": self.koleo_loss_weight,
                "mask_ratio": list(self.mask_ratio),
                "mask_probability": self.mask_probability,
                "ibot_separate_head": self.ibot_separate_head,
                "ibot_output_dim": self.ibot_output_dim,
                "ibot_hidden_dim": self.ibot_hidden_dim,
                "ibot_bottleneck_dim": self.ibot_bottleneck_dim,
                "layerwise_decay": self.layerwise_decay,
                "patch_embed_lr_multiplier": self.patch_embed_lr_multiplier,
                "seed": self.seed,
            }
        )
        return config
