"""One training step of SimCLR, MoCo-v2, BYOL and DINO on one device and data-parallel
on two, saved for `test_data_parallel_parity.py` to compare.

Run by the test in a subprocess (the engines need their devices or processes set up
before the backend starts):

    python _parity_worker.py OUT_DIR single     # world size 1, global batch of 8
    python _parity_worker.py OUT_DIR parallel   # 2 replicas, 4 images each

On JAX (2 virtual host devices, XLA_FLAGS set by the caller) and TensorFlow (the CPU
split into 2 logical devices) one process runs both modes; on PyTorch each of the two
gloo processes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set by the caller) runs
`parallel` and process 0 also runs `single` first.

The models contain batch norm (the backbone; the heads of SimCLR and BYOL), converted
to `SyncBatchNormalization` so that both runs normalise over the same 8 images. DINO
clips gradients (clipnorm) so that the test also covers clipping the global gradient.
DINOv2 (a tiny ViT, no batch norm) checks Sinkhorn-Knopp, the iBOT masks and KoLeo
over the global batch.
"""

import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BACKEND = os.environ["KERAS_BACKEND"]
if BACKEND == "tensorflow":
    from keras_ssl.distributed import _tensorflow

    _tensorflow.split_cpu(2)
if BACKEND == "torch":
    import torch

    torch.set_num_threads(1)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ssl  # noqa: E402
from keras_ssl.backbones import ConvNet  # noqa: E402

GLOBAL_BATCH = 8
METHODS = ("simclr", "mocov2", "byol", "dino", "dinov2")


class RecordingSGD(keras.optimizers.SGD):
    """Plain SGD that also stores the gradient it applied to each variable."""

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.recorded = [
            self.add_variable_from_reference(v, "recorded_gradient") for v in variables
        ]

    def update_step(self, gradient, variable, learning_rate):
        self.assign(self.recorded[self._get_variable_index(variable)], gradient)
        super().update_step(gradient, variable, learning_rate)


def make_model(name):
    keras.utils.set_random_seed(0)
    backbone = ConvNet(widths=(4, 8), input_channels=1)
    if name == "simclr":
        model = keras_ssl.SimCLR(backbone, projection_dim=8, hidden_dim=8, temperature=0.5)
    elif name == "mocov2":
        model = keras_ssl.MoCoV2(
            backbone, projection_dim=8, hidden_dim=8, queue_size=16, momentum=0.9
        )
    elif name == "byol":
        model = keras_ssl.BYOL(backbone, projection_dim=8, hidden_dim=8, momentum=0.9)
    elif name == "dinov2":
        vit = keras_ssl.backbones.ViT(
            patch_size=4,
            hidden_dim=8,
            depth=1,
            num_heads=2,
            input_channels=1,
            pretrain_image_size=8,
        )
        # Sinkhorn-Knopp, iBOT masks (half the crops) and KoLeo over the global batch.
        model = keras_ssl.DINOv2(
            vit,
            output_dim=16,
            hidden_dim=8,
            bottleneck_dim=8,
            momentum=0.9,
            freeze_last_layer_epochs=0,
            seed=3,
            layerwise_decay=0.9,  # per-variable rates, kept per replica thread on TF
            patch_embed_lr_multiplier=0.2,
        )
    else:
        model = keras_ssl.DINO(
            backbone,
            output_dim=16,
            hidden_dim=8,
            bottleneck_dim=8,
            momentum=0.9,
            freeze_last_layer_epochs=0,
            center_momentum=0.5,
        )
    return keras_ssl.distributed.convert_sync_batchnorm(model)


def views(name):
    rng = np.random.default_rng(1)
    shapes = [(8, 8)] * 2 + ([(6, 6)] * 2 if name == "dino" else [])
    shapes += [(4, 4)] * 2 if name == "dinov2" else []
    return tuple(rng.uniform(size=(GLOBAL_BATCH, *s, 1)).astype("float32") for s in shapes)


def run(name, engine=None):
    scope = engine.scope() if engine is not None else contextlib.nullcontext()
    with scope:
        model = make_model(name)
        clip = {"clipnorm": 0.05} if name == "dino" else {}
        # The one-device reference runs eagerly on TF: five graph traces less, same math.
        eager = engine is None and BACKEND == "tensorflow"
        model.compile(optimizer=RecordingSGD(learning_rate=0.5, **clip), run_eagerly=eager)
    if engine is not None and engine.process_index > 0:
        # Other processes start elsewhere: fit must copy process 0's weights to them.
        for variable in model.weights:
            variable.assign(variable + 1.0)
    data = views(name)
    batch = GLOBAL_BATCH
    if engine is not None:
        data = engine.shard(data)
        batch = engine.batch_size(GLOBAL_BATCH)
    history = model.fit(data, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    result = {"loss": np.asarray(history.history["loss"][0])}
    opt = model.optimizer
    # Keyed by position: the two runs' models are built alike, their names may differ.
    for i, v in enumerate(model.trainable_variables):
        result[f"grad:{i}:{v.name}"] = keras.ops.convert_to_numpy(
            opt.recorded[opt._get_variable_index(v)]
        )
        result[f"weight:{i}:{v.name}"] = keras.ops.convert_to_numpy(v)
    for i, v in enumerate(model.non_trainable_variables):
        result[f"state:{i}:{v.name}"] = keras.ops.convert_to_numpy(v)
    return result


def main(out_dir, mode):
    engine = None
    if mode == "parallel":
        engine = keras_ssl.distributed.data_parallel(num_devices=2)
        assert engine.num_replicas == 2, engine
    chief = engine is None or engine.is_chief
    # torch: every process saves (the second as "parallel-rank1"), to check they agree
    label = mode if chief else f"{mode}-rank{engine.process_index}"
    for name in os.environ.get("PARITY_METHODS", ",".join(METHODS)).split(","):
        result = run(name, engine)
        if chief or engine.num_processes > 1:
            np.savez(os.path.join(out_dir, f"{label}_{name}.npz"), **result)
    if chief:
        print("done", mode)


if __name__ == "__main__":
    out_dir, modes = sys.argv[1], sys.argv[2:]
    for mode in modes:
        if BACKEND == "torch" and mode == "single" and os.environ.get("RANK", "0") != "0":
            continue
        main(out_dir, mode)
