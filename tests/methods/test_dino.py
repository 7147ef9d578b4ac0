import keras
import numpy as np
from keras import ops

import keras_ssl
from keras_ssl.backbones import ConvNet
from tests._support.views import blocky_views


def _model(backbone=None, **kwargs):
    defaults = dict(output_dim=32, hidden_dim=16, bottleneck_dim=8, use_bn_in_head=False)
    defaults.update(kwargs)
    return keras_ssl.DINO(backbone or ConvNet(widths=(8, 16), input_channels=1), **defaults)


def _views(n=16, seed=0):
    """Two 16 px global views and two 8 px local views of blocky images."""
    return blocky_views(n, sizes=(16, 16, 8, 8), seed=seed)


def _sgd():
    return keras.optimizers.SGD(0.05, momentum=0.9)


def test_thirty_steps_on_a_fixed_batch_lower_the_loss():
    # Centring is frozen (at zero) here: on one batch of 16 images the centre chases the
    # teacher's mean and the loss first rises, as DINO's own curves do early in training.
    # The centre update itself is checked against its closed form below.
    model = _model(warmup_teacher_temperature_epochs=0, center_momentum=1.0)
    model.compile(optimizer=keras.optimizers.AdamW(5e-4, weight_decay=0.0))
    losses = model.fit(_views(), batch_size=16, epochs=30, verbose=0).history["loss"]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses


def test_loss_and_centre_match_the_ops():
    model = _model(center_momentum=0.8)
    views = tuple(ops.convert_to_tensor(v) for v in _views(8))
    model.compile(optimizer=_sgd())
    model.optimizer.build(model.trainable_variables)
    # Views of one size share a backbone call (and so their batch-norm statistics).
    student = [model.head(h) for h in model.encode_views(model.backbone, views)]
    teacher = [model.teacher_head(h) for h in model.encode_views(model.teacher_backbone, views[:2])]
    center = ops.convert_to_numpy(model.center)
    expected = keras_ssl.ops.dino_loss(student, teacher, center, 0.1, 0.04)
    loss, _ = model.compute_ssl_loss(views, training=True)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-4)
    teacher_mean = np.mean(np.concatenate([ops.convert_to_numpy(t) for t in teacher]), axis=0)
    np.testing.assert_allclose(
        ops.convert_to_numpy(model.center)[0], 0.8 * center[0] + 0.2 * teacher_mean, atol=1e-5
    )


def test_schedules_follow_the_step_counter():
    model = _model(
        warmup_teacher_temperature=0.04,
        teacher_temperature=0.07,
        warmup_teacher_temperature_epochs=2,
        weight_decay=0.0,
        final_weight_decay=0.0,
    )
    model.compile(optimizer=_sgd())
    model.fit(_views(32), batch_size=16, epochs=1, verbose=0)  # 2 steps an epoch
    assert int(ops.convert_to_numpy(model.steps_per_epoch)) == 2
    # Epoch 1 of a 2-epoch warm-up: np.linspace(0.04, 0.07, 2)[1] in DINO's code.
    np.testing.assert_allclose(float(model.current_teacher_temperature()), 0.07, rtol=1e-6)
    # Momentum after step k=1 of K=2 (DINO's cosine_scheduler: value at k / K).
    expected = 1.0 - (1.0 - 0.996) * (1 + np.cos(np.pi * 1 / 2)) / 2
    np.testing.assert_allclose(float(model.teacher_momentum()), expected, rtol=1e-7)
    # No warm-up: the final temperature from the first step, as in DINO's code.
    no_warmup = _model(warmup_teacher_temperature_epochs=0, teacher_temperature=0.07)
    no_warmup.compile(optimizer=_sgd())
    np.testing.assert_allclose(float(no_warmup.current_teacher_temperature()), 0.07, rtol=1e-6)


def _official_teacher_temperatures(warmup, final, warmup_epochs, epochs):
    """main_dino.py's schedule: a linspace warm-up indexed by epoch, then constant."""
    return np.concatenate(
        (np.linspace(warmup, final, warmup_epochs), np.full(epochs - warmup_epochs, final))
    )


def test_teacher_temperature_warms_up_by_epoch_as_the_official_code():
    model = _model(
        warmup_teacher_temperature=0.04,
        teacher_temperature=0.07,
        warmup_teacher_temperature_epochs=4,
    )
    model.compile(optimizer=_sgd())
    model.steps_per_epoch.assign(3)
    expected = _official_teacher_temperatures(0.04, 0.07, 4, epochs=6)
    for step in range(18):
        model.batches_trained.assign(step)
        got = float(model.current_teacher_temperature())
        np.testing.assert_allclose(got, expected[step // 3], rtol=1e-6, err_msg=f"step {step}")


def test_last_layer_frozen_in_the_first_epoch_only():
    model = _model(weight_decay=0.0, final_weight_decay=0.0, freeze_last_layer_epochs=1)
    model.compile(optimizer=_sgd())
    v0 = ops.convert_to_numpy(model.head.last_layer_v)
    mlp = next(w for w in model.head.trainable_weights if "linear_0/kernel" in w.path)
    mlp0 = ops.convert_to_numpy(mlp)
    model.fit(_views(32), batch_size=16, epochs=1, verbose=0)
    np.testing.assert_array_equal(ops.convert_to_numpy(model.head.last_layer_v), v0)
    assert not np.array_equal(ops.convert_to_numpy(mlp), mlp0)
    model.fit(_views(32), batch_size=16, epochs=2, initial_epoch=1, verbose=0)
    assert not np.array_equal(ops.convert_to_numpy(model.head.last_layer_v), v0)


def test_the_frozen_last_layers_gradient_reaches_the_optimizer():
    # As at learning rate 0 (DINOv2): Adam's moments of the last layer are warm when it
    # thaws. A zeroed gradient left them at zero under bias corrections of the whole run,
    # which made its first steps after thawing several times the learning rate.
    model = _model(weight_decay=0.5, final_weight_decay=0.5, freeze_last_layer_epochs=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    v0 = ops.convert_to_numpy(model.head.last_layer_v)
    model.fit(_views(32), batch_size=16, epochs=1, verbose=0)
    np.testing.assert_array_equal(ops.convert_to_numpy(model.head.last_layer_v), v0)
    index = model.optimizer._get_variable_index(model.head.last_layer_v)
    for moments in (model.optimizer._momentums, model.optimizer._velocities):
        assert np.any(ops.convert_to_numpy(moments[index]) != 0)


def test_weight_decay_uses_the_learning_rate_of_its_step():
    # lr(0) = 0: the first step neither moves nor decays the weights (the official code
    # decays with lr[it] of the same iteration); lr(1) = 0.2 was read after the step.
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.0, 0.2])
    model = _model(weight_decay=0.5, final_weight_decay=0.5, freeze_last_layer_epochs=0)
    model.compile(optimizer=keras.optimizers.SGD(schedule))
    before = {w.path: ops.convert_to_numpy(w) for w in model.backbone.trainable_weights}
    model.fit(_views(), batch_size=16, epochs=1, verbose=0)
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 1
    for w in model.backbone.trainable_weights:
        np.testing.assert_array_equal(ops.convert_to_numpy(w), before[w.path], err_msg=w.path)


def test_teacher_head_runs_in_training_mode():
    # DINO never puts its teacher in eval mode: a head with batch norm normalises with the
    # batch's statistics and updates the teacher's own moving ones.
    model = _model(use_bn_in_head=True, center_momentum=1.0)
    model.compile(optimizer=_sgd())
    model.optimizer.build(model.trainable_variables)
    views = tuple(ops.convert_to_tensor(v) for v in _views(8))
    features = ops.concatenate(model.encode_views(model.teacher_backbone, views[:2]), axis=0)
    moving = [w for w in model.teacher_head.non_trainable_weights if "moving_mean" in w.path]
    assert moving and not np.any(ops.convert_to_numpy(moving[0]))
    expected = model.teacher_head(features, training=True)  # updates the moving mean
    updated = ops.convert_to_numpy(moving[0])
    moving[0].assign(np.zeros_like(updated))
    student = ops.concatenate(model.encode_views(model.backbone, views), axis=0)
    student = ops.split(model.head(student, training=True), len(views), axis=0)
    teacher = ops.split(expected, 2, axis=0)
    reference = keras_ssl.ops.dino_loss(list(student), list(teacher), model.center, 0.1, 0.04)
    loss, _ = model.compute_ssl_loss(views, training=True)
    np.testing.assert_allclose(float(loss), float(reference), rtol=1e-5)
    assert np.any(updated != 0)
    np.testing.assert_allclose(ops.convert_to_numpy(moving[0]), updated, rtol=1e-6, atol=1e-7)


def test_weight_decay_schedule_shrinks_weights_not_biases():
    model = _model(weight_decay=0.5, final_weight_decay=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.2))
    model.optimizer.build(model.trainable_variables)
    model.total_steps.assign(4)
    model.batches_trained.assign(3)  # the step just taken has index 2 of 4
    before = {w.path: ops.convert_to_numpy(w) for w in model.backbone.trainable_weights}
    model.after_optimizer_step()
    wd = 0.1 - (0.1 - 0.5) * (1 + np.cos(np.pi * 2 / 4)) / 2
    for w in model.backbone.trainable_weights:
        factor = 1 - 0.2 * wd if len(w.shape) > 1 else 1.0  # biases and norms never decay
        np.testing.assert_allclose(ops.convert_to_numpy(w), before[w.path] * factor, rtol=1e-6)


def test_weight_decay_of_a_fit_step_reaches_the_weights():
    # Decoupled decay is applied after the optimizer's step, inside the compiled train step;
    # the decayed weights must be what the step returns (on JAX, as new state).
    weights = []
    for weight_decay in (0.0, 0.5):
        keras.utils.set_random_seed(2)
        model = _model(
            weight_decay=weight_decay,
            final_weight_decay=weight_decay,
            freeze_last_layer_epochs=0,
            center_momentum=1.0,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.2))
        model.fit(_views(), batch_size=16, epochs=1, verbose=0)
        weights.append({w.path: ops.convert_to_numpy(w) for w in model.backbone.trainable_weights})
    plain, decayed = weights
    for path, value in plain.items():
        factor = 1 - 0.2 * 0.5 if value.ndim > 1 else 1.0
        np.testing.assert_allclose(decayed[path], value * factor, rtol=1e-5, atol=1e-7)


def test_a_step_the_loss_scale_skips_does_not_decay_the_weights(monkeypatch):
    # Official DINO decays inside AdamW's step, which its fp16 scaler skips on an overflow.
    original = keras_ssl.DINO.transform_gradients

    def overflowing(self, gradients):
        return [g * float("inf") for g in original(self, gradients)]

    monkeypatch.setattr(keras_ssl.DINO, "transform_gradients", overflowing)
    model = _model(weight_decay=0.5, final_weight_decay=0.5, freeze_last_layer_epochs=0)
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.2)))
    before = {w.path: ops.convert_to_numpy(w) for w in model.backbone.trainable_weights}
    model.fit(_views(), batch_size=16, epochs=1, verbose=0)  # no empty-data error either
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 0  # the step was skipped
    for w in model.backbone.trainable_weights:
        np.testing.assert_array_equal(ops.convert_to_numpy(w), before[w.path], err_msg=w.path)


def test_vit_backbone_multi_crop_step():
    vit = keras_ssl.backbones.ViT(
        patch_size=4,
        hidden_dim=16,
        depth=1,
        num_heads=2,
        input_channels=1,
        pretrain_image_size=16,
    )
    model = _model(backbone=vit)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.0, clipnorm=3.0))
    history = model.fit(_views(8), batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_save_load_keeps_centre_and_teacher(tmp_path):
    model = _model()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.0))
    model.fit(_views(16), batch_size=16, epochs=1, verbose=0)
    assert np.any(ops.convert_to_numpy(model.center) != 0)
    path = tmp_path / "dino.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    for a, b in zip(restored.weights, model.weights, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
