import keras
import numpy as np
import pytest
from keras import ops

import keras_ssl
from keras_ssl.backbones import ViT
from tests._support.views import blocky_views


def _vit(**kwargs):
    return ViT(
        patch_size=4,
        hidden_dim=16,
        depth=1,
        num_heads=2,
        input_channels=1,
        pretrain_image_size=16,
        **kwargs,
    )


def _model(backbone=None, **kwargs):
    defaults = dict(output_dim=32, hidden_dim=16, bottleneck_dim=8, seed=0)
    defaults.update(kwargs)
    return keras_ssl.DINOv2(backbone or _vit(), **defaults)


def _views(n=8, seed=0):
    """Two 16 px global views and two 8 px local views of blocky images."""
    return blocky_views(n, sizes=(16, 16, 8, 8), seed=seed)


def _np(x):
    return ops.convert_to_numpy(x)


def test_fit_logs_three_terms_that_add_up_and_save_load_keeps_all_weights(tmp_path):
    model = _model(backbone=_vit(num_register_tokens=1, layer_scale_init=1e-5))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.0, clipnorm=3.0))
    # 12 images in batches of 8: the last batch is smaller (TensorFlow retraces it with a
    # dynamic batch size, which the mask sampler must handle).
    history = model.fit(_views(12), batch_size=8, epochs=2, verbose=0).history
    for name in ("loss", "dino_loss", "ibot_loss", "koleo_loss"):
        assert np.all(np.isfinite(history[name])), (name, history[name])
    total = np.add(np.add(history["dino_loss"], history["ibot_loss"]), history["koleo_loss"])
    np.testing.assert_allclose(history["loss"], total, rtol=1e-5)

    # Sinkhorn-Knopp leaves the centres at zero: give them values to check they are saved.
    rng = np.random.default_rng(0)
    model.center.assign(rng.normal(size=(1, 32)).astype("float32"))
    model.patch_center.assign(rng.normal(size=(1, 32)).astype("float32"))
    teacher = _np(model.teacher_patch_head.weights[0])
    assert not np.array_equal(teacher, _np(model.patch_head.weights[0]))  # EMA, not a copy
    path = tmp_path / "dinov2.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, keras_ssl.DINOv2)
    assert restored.get_config() == model.get_config()
    assert len(restored.weights) == len(model.weights)
    for a, b in zip(restored.weights, model.weights, strict=True):
        np.testing.assert_array_equal(_np(a), _np(b))
    np.testing.assert_array_equal(_np(restored.teacher_patch_head.weights[0]), teacher)


@pytest.mark.parametrize("centering", ["centering", "sinkhorn_knopp"])
def test_loss_matches_the_ops(centering):
    model = _model(centering=centering, ibot_loss_weight=0.5, koleo_loss_weight=0.3)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    model.optimizer.build(model.trainable_variables)
    model.patch_center.assign(np.full((1, 32), 0.1, "float32"))
    views = tuple(ops.convert_to_tensor(v) for v in _views(8))
    # The masks compute_ssl_loss will draw: sample them, then rewind the seed generator.
    state = _np(model.seed_generator.state)
    masks = model.sample_masks(16, (4, 4))
    model.seed_generator.state.assign(state)

    globals_ = ops.concatenate(views[:2], axis=0)
    student = model.backbone.forward_features(globals_, masks=masks)
    student_logits = list(ops.split(model.head(student["cls"]), 2, axis=0))
    student_logits += [model.head(model.backbone(v)) for v in views[2:]]
    # The patch heads see the masked patches only (DINOv2): select them with NumPy.
    masked = np.flatnonzero(_np(masks).reshape(-1))
    assert 0 < len(masked) < 16 * 16
    patch_logits = _np(model.patch_head(_np(student["patches"]).reshape(-1, 16)[masked]))
    teacher = model.teacher_backbone.forward_features(globals_)
    teacher_logits = model.teacher_head(teacher["cls"])
    teacher_patches = _np(model.teacher_patch_head(_np(teacher["patches"]).reshape(-1, 16)[masked]))
    center, patch_center = _np(model.center), _np(model.patch_center)
    tau = 0.04
    if centering == "centering":
        dino = keras_ssl.ops.dino_loss(
            student_logits, list(ops.split(teacher_logits, 2, axis=0)), center, 0.1, tau
        )
        patch_probs = _np(ops.softmax((teacher_patches - patch_center) / tau, axis=-1))
    else:
        probs = keras_ssl.ops.sinkhorn_knopp(teacher_logits, tau, num_iterations=3)
        # softmax(log q) = q: dino_loss with log-probabilities, no centre, temperature 1.
        log_probs = [ops.log(p) for p in ops.split(probs, 2, axis=0)]
        dino = keras_ssl.ops.dino_loss(student_logits, log_probs, np.zeros(32, "float32"), 0.1, 1)
        # Sinkhorn-Knopp over the masked patches alone (B = their number).
        patch_probs = _np(keras_ssl.ops.sinkhorn_knopp(teacher_patches, tau, num_iterations=3))
    # Scattered back to (2N, P, K), zeros at the unmasked patches, for the full-form loss.
    full_logits = np.zeros((16 * 16, 32), "float32")
    full_probs = np.zeros((16 * 16, 32), "float32")
    full_logits[masked], full_probs[masked] = patch_logits, patch_probs
    ibot = keras_ssl.ops.ibot_patch_loss(
        full_logits.reshape(16, 16, 32), full_probs.reshape(16, 16, 32), masks, 0.1
    )
    cls_a, cls_b = ops.split(student["cls"], 2, axis=0)
    koleo = keras_ssl.ops.koleo_loss(cls_a) + keras_ssl.ops.koleo_loss(cls_b)

    loss, logs = model.compute_ssl_loss(views, training=True)
    expected = {"dino_loss": dino, "ibot_loss": 0.5 * ibot, "koleo_loss": 0.3 * koleo}
    for name, value in expected.items():
        np.testing.assert_allclose(float(logs[name]), float(value), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(loss), float(sum(expected.values())), rtol=1e-4)
    assert float(ibot) > 0
    if centering == "centering":  # both centres follow their teacher outputs
        teacher_mean = np.mean(_np(teacher_logits), axis=0)
        np.testing.assert_allclose(_np(model.center)[0], 0.1 * teacher_mean, atol=1e-5)
        patch_mean = np.mean(teacher_patches, axis=0)  # over the masked patches only
        expected_patch = 0.9 * patch_center[0] + 0.1 * patch_mean
        np.testing.assert_allclose(_np(model.patch_center)[0], expected_patch, atol=1e-5)


def test_patch_heads_run_on_the_masked_patches_only():
    # 2 x 8 global crops of 16 patches: at most floor(0.5 * 16) = 8 crops masked, each at
    # most floor(0.5 * 16) = 8 patches, so the heads get 64 rows instead of 256.
    model = _model(mask_probability=0.5, mask_ratio=(0.1, 0.5))
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    model.optimizer.build(model.trainable_variables)
    shapes, valid_rows = {}, []
    for name in ("patch_head", "teacher_patch_head"):
        head = getattr(model, name)

        def spy(x, training=None, valid=None, _call=head.call, _name=name):
            shapes.setdefault(_name, []).append(tuple(x.shape))
            if valid is not None:
                valid_rows.append(int(_np(valid).sum()))
            return _call(x, training=training, valid=valid)

        head.call = spy
    _, logs = model.compute_ssl_loss(tuple(ops.convert_to_tensor(v) for v in _views(8)))
    assert shapes == {"patch_head": [(64, 16)], "teacher_patch_head": [(64, 16)]}
    assert float(logs["ibot_loss"]) > 0
    # The bound holds for every draw: no mask has more than 8 patches, nor more than 8
    # masked crops.
    for _ in range(5):
        counts = _np(model.sample_masks(16, (4, 4))).sum(axis=1)
        assert counts.max() <= 8 and (counts > 0).sum() <= 8
        assert counts.sum() <= model._masked_rows_bound(16, 16) == 64
    # Explicit masks: all 2N * P rows (correct, without the saving).
    shapes.clear()
    masks = np.zeros((16, 16), bool)
    masks[3, :12] = True  # more than the sampler's bound
    model.compute_ssl_loss_with_masks(tuple(ops.convert_to_tensor(v) for v in _views(8)), masks)
    assert shapes == {"patch_head": [(256, 16)], "teacher_patch_head": [(256, 16)]}
    # The student's head is told which rows are masked patches (its BN, if any, uses those).
    assert valid_rows[-1] == 12


def test_patch_head_batch_norm_sees_the_masked_patches_only():
    # With use_bn_in_head, the patch head's BN statistics come from the masked patch tokens
    # alone: the moving mean moves by (1 - 0.9) x the mean of their first linear layer.
    model = _model(use_bn_in_head=True)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    views = tuple(ops.convert_to_tensor(v) for v in _views(8))
    masks = np.zeros((16, 16), bool)
    masks[3, :12] = True
    masks[9, 5:9] = True
    model.compute_ssl_loss_with_masks(views, masks, training=True)
    student = model.backbone.forward_features(
        ops.concatenate(views[:2], axis=0), masks=ops.convert_to_tensor(masks), training=True
    )
    patches = _np(student["patches"]).reshape(-1, 16)[masks.reshape(-1)]
    hidden = _np(model.patch_head.mlp[0](ops.convert_to_tensor(patches)))
    batch_norm = model.patch_head.mlp[1]
    np.testing.assert_allclose(
        _np(batch_norm.moving_mean), 0.1 * hidden.mean(axis=0), rtol=1e-4, atol=1e-6
    )


def test_masked_rows_bound_counts_the_global_batch(monkeypatch):
    # In data-parallel training the masked crops are drawn over the global batch, so one
    # replica may hold up to all its crops masked: floor(0.5 * 2 * 16) = 16 of its 16.
    model = _model(mask_probability=0.5, mask_ratio=(0.1, 0.5))
    assert model._masked_rows_bound(16, 16) == 8 * 8
    monkeypatch.setattr(keras_ssl.methods.dinov2.distributed, "world_size", lambda: 2)
    assert model._masked_rows_bound(16, 16) == 16 * 8
    monkeypatch.setattr(keras_ssl.methods.dinov2.distributed, "world_size", lambda: 4)
    assert model._masked_rows_bound(16, 16) == 16 * 8  # never more than the replica's crops


def test_masks_ratio_probability_and_global_crops_only():
    model = _model(mask_probability=0.5, mask_ratio=(0.1, 0.5))
    masks = _np(model.sample_masks(40, (8, 8)))
    counts = masks.sum(axis=1)
    assert (counts > 0).sum() == 20  # half the crops masked, as DINOv2's collate
    assert counts.max() <= 32  # 0.5 * 64; blocks never overshoot their target
    # The 20 ratios are spread over the 20 slices of (0.1, 0.5): targets floor(64 r).
    assert counts[counts > 0].min() <= 10 and counts.max() >= 24
    assert len({tuple(np.flatnonzero(m)) for m in masks[counts > 0]}) > 1  # positions too

    calls = []
    forward = model.backbone.forward_features

    def spy(images, masks=None, training=False):
        calls.append((tuple(images.shape), None if masks is None else _np(masks)))
        return forward(images, masks=masks, training=training)

    model.backbone.forward_features = spy
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    model.optimizer.build(model.trainable_variables)
    model.compute_ssl_loss(tuple(ops.convert_to_tensor(v) for v in _views(8)))
    masked = [(shape, m) for shape, m in calls if m is not None]
    assert len(masked) == 1 and masked[0][0] == (16, 16, 16, 1)  # the 2 x 8 global crops
    assert masked[0][1].any()
    assert all(m is None for shape, m in calls if shape[1] == 8)  # local crops unmasked

    unmasked = _model(mask_probability=0.0)
    unmasked.compile(optimizer=keras.optimizers.SGD(0.01))
    unmasked.optimizer.build(unmasked.trainable_variables)
    _, logs = unmasked.compute_ssl_loss(tuple(ops.convert_to_tensor(v) for v in _views(8)))
    assert float(logs["ibot_loss"]) == 0.0


def test_thirty_steps_on_a_fixed_batch_lower_the_loss():
    # DINO's centring, frozen at zero (center_momentum=1): on one batch of 8 images a moving
    # centre chases the teacher's mean and the loss first rises, as in DINO's early training
    # (and Sinkhorn-Knopp's uniform targets over 16 crops leave little to learn here).
    model = _model(
        centering="centering",
        center_momentum=1.0,
        warmup_teacher_temperature_epochs=0,
        weight_decay=0.0,
        final_weight_decay=0.0,
        freeze_last_layer_epochs=0,
    )
    model.compile(optimizer=keras.optimizers.AdamW(2e-3, weight_decay=0.0))
    losses = model.fit(_views(8), batch_size=8, epochs=30, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses


def test_teacher_temperature_warms_up_by_step_as_the_official_code():
    # DINOv2's CosineScheduler warm-up: np.linspace(start, base, warmup_iters)[it], then
    # the base value.
    model = _model(
        warmup_teacher_temperature=0.04,
        teacher_temperature=0.07,
        warmup_teacher_temperature_epochs=2,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    model.steps_per_epoch.assign(3)
    expected = np.concatenate((np.linspace(0.04, 0.07, 6), np.full(4, 0.07)))
    for step, value in enumerate(expected):
        model.batches_trained.assign(step)
        got = float(model.current_teacher_temperature())
        np.testing.assert_allclose(got, value, rtol=1e-6, err_msg=f"step {step}")


def test_refuses_backbones_without_patch_tokens():
    resnet = keras_ssl.backbones.ResNet(
        stackwise_num_blocks=(1,), stem="cifar", input_channels=1, width=4
    )
    with pytest.raises(TypeError, match="forward_features"):
        keras_ssl.DINOv2(resnet, output_dim=32, hidden_dim=16, bottleneck_dim=8)


def test_layerwise_decay_and_patch_embedding_rate_scale_each_update():
    """One Adam step with layer-wise decay moves each ViT weight by exactly its multiplier
    times the step without it (Adam's step does not scale with its gradients, so this
    fails for an implementation that scales gradients instead of rates)."""
    depth, decay = 2, 0.5
    deltas = []
    for layerwise_decay, patch_embed in ((1.0, 1.0), (decay, 0.2)):
        keras.utils.set_random_seed(1)
        model = _model(
            backbone=ViT(
                patch_size=4,
                hidden_dim=16,
                depth=depth,
                num_heads=2,
                input_channels=1,
                pretrain_image_size=16,
            ),
            layerwise_decay=layerwise_decay,
            patch_embed_lr_multiplier=patch_embed,
            weight_decay=0.0,
            final_weight_decay=0.0,
            freeze_last_layer_epochs=0,
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        before = {v.path: _np(v) for v in model.backbone.trainable_weights}
        before.update({"head/" + v.path: _np(v) for v in model.head.trainable_weights})
        model.fit(_views(8), batch_size=8, epochs=1, verbose=0, shuffle=False)
        after = {v.path: _np(v) for v in model.backbone.trainable_weights}
        after.update({"head/" + v.path: _np(v) for v in model.head.trainable_weights})
        deltas.append({k: after[k] - before[k] for k in before})

    plain, decayed = deltas
    expected = {"patch_embed": decay ** (depth + 1) * 0.2, "pos_embed": decay ** (depth + 1)}
    expected.update({"blocks_0": decay**2, "blocks_1": decay, "norm/": 1.0, "head/": 1.0})
    checked = set()
    for path, delta in plain.items():
        (prefix,) = [p for p in expected if path.startswith(p)] or [None]
        if prefix is None or not np.abs(delta).max() > 1e-6:
            continue
        np.testing.assert_allclose(
            decayed[path], expected[prefix] * delta, rtol=1e-3, atol=1e-7, err_msg=path
        )
        checked.add(prefix)
    assert checked == set(expected), checked


def test_weight_decay_scales_with_each_weights_learning_rate_multiplier():
    """DINO's decoupled decay, `w <- w (1 - lr wd m)` with `m` the weight's layer-wise
    multiplier, on matrices only; run alone through the after-step (the optimizer's update
    stood in for by its step counter), and skipped where the optimizer skipped its step."""
    model = _model(
        backbone=ViT(patch_size=4, hidden_dim=16, depth=2, num_heads=2, input_channels=1),
        layerwise_decay=0.5,
        patch_embed_lr_multiplier=0.2,
        weight_decay=0.3,
        final_weight_decay=0.3,
        freeze_last_layer_epochs=0,  # a frozen last layer keeps its values, decay included
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.optimizer.build(model.trainable_variables)
    multipliers = {id(v): m for v, m in model.learning_rate_multipliers()}
    students = model.backbone.trainable_weights + model.head.trainable_weights
    before = [_np(v) for v in students]
    model.transform_gradients([None] * len(model.trainable_variables))  # values before "update"
    model.after_optimizer_step()  # the step counter did not move: a skipped step, no decay
    for variable, value in zip(students, before, strict=True):
        np.testing.assert_array_equal(_np(variable), value, err_msg=variable.path)
    model.transform_gradients([None] * len(model.trainable_variables))
    model.optimizer.iterations.assign_add(1)  # a step taken
    model.after_optimizer_step()
    assert len({multipliers.get(id(v), 1.0) for v in students if len(v.shape) > 1}) >= 3
    for variable, value in zip(students, before, strict=True):
        factor = 1 - 0.1 * 0.3 * multipliers.get(id(variable), 1.0) if value.ndim > 1 else 1.0
        np.testing.assert_allclose(
            _np(variable), value * factor, rtol=1e-6, atol=1e-8, err_msg=variable.path
        )


def test_vit_layer_decay_multipliers():
    vit = ViT(
        patch_size=4,
        hidden_dim=16,
        depth=3,
        num_heads=2,
        pretrain_image_size=16,
        num_register_tokens=2,
    )
    multipliers = {v.path: m for v, m in keras_ssl.optimizers.vit_layer_decay(vit, 0.9, 0.2)}
    assert len(multipliers) == len(vit.trainable_weights)
    for path, value in multipliers.items():
        if path.startswith("patch_embed"):
            assert value == pytest.approx(0.9**4 * 0.2)
        elif path.startswith(("cls_token", "pos_embed", "mask_token", "register_tokens")):
            assert value == pytest.approx(0.9**4)
        elif path.startswith("blocks_"):
            assert value == pytest.approx(0.9 ** (3 - int(path.split("_")[1])))
        else:
            assert path.startswith("norm") and value == 1.0
