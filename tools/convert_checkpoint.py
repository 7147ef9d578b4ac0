"""Convert an official PyTorch checkpoint (``.pth``) into a Keras-native keras_ssl preset.

Run offline, once; loading the result needs no torch: ``keras_ssl.from_preset(<output>)``.
Checkpoints are read with ``torch.load(weights_only=True)`` only (tensors, dicts and the
``argparse.Namespace`` of DINO's ``args``; never arbitrary pickled objects).

Two kinds of checkpoints:

* a backbone ``state_dict`` (DINO's ``dino_*_pretrain.pth``, MoCo's
  ``moco_v2_800ep_pretrain.pth.tar`` whose ``state_dict`` holds ``module.encoder_q.*``,
  ...) -> a backbone preset;
* a DINO full checkpoint (``*_full_checkpoint.pth``: ``student``, ``teacher``, ``epoch``,
  ``args``, ``dino_loss.center``) with ``--method dino`` -> a ``keras_ssl.DINO`` preset
  (student and teacher backbones and heads, centre) to continue pretraining with
  ``keras_ssl.from_preset(<output>, task="pretraining")``. The head's sizes and depth are
  read from its weights, the loss and schedule options from ``args`` (``DINO_ARGS``). The
  optimizer state is not converted (recompile; the epoch is recorded in ``metadata.json``).

The architecture comes from ``--card`` (a registered preset: its backbone, converter,
preprocessing, licence and scores) or from ``--converter`` with ``--architecture`` /
``--backbone-config``.

Examples:

    python tools/convert_checkpoint.py --card mocov2_resnet50 \
        --checkpoint moco_v2_800ep_pretrain.pth.tar --output presets_out/mocov2_resnet50
    python tools/convert_checkpoint.py --card dino_vits16 --method dino \
        --checkpoint dino_deitsmall16_pretrain_full_checkpoint.pth --output dino_vits16_full
    python tools/convert_checkpoint.py --converter torchvision_resnet --architecture resnet50 \
        --checkpoint my_resnet.pth --output my_resnet
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_torch_checkpoint(path):
    """``torch.load(path, weights_only=True)``, allowing DINO's ``argparse.Namespace``."""
    import torch

    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(str(path), map_location="cpu", weights_only=True)


def to_numpy(state):
    """Tensors of a (nested-free) state dict -> float32 / int NumPy arrays."""
    import torch

    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            out[key] = (value.float() if value.is_floating_point() else value).numpy()
    return out


def strip(state, prefix):
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _args_dict(args):
    if args is None:
        return {}
    return dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)


def _flag(value):
    """A boolean of DINO's ``args``: main_dino.py stores ``bool_flag``'s bools, but an
    ``args`` dict written from a config file may hold ``"False"`` (which ``bool`` reads as
    True) or 0 / 1."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "on", "off"):
        return value.strip().lower() in ("true", "1", "on")
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    raise SystemExit(f"Cannot read {value!r} in the checkpoint's args as a boolean flag.")


# main_dino.py's ``args`` that shape the DINO loss and schedules -> keras_ssl.DINO options.
# The head's sizes come from the weights; ``arch`` / ``patch_size`` from the card or
# ``--architecture`` (``patch_size`` is checked); ``drop_path_rate``, ``local_crops_number``
# and the crop scales, ``epochs``, ``lr``, ``clip_grad``, ``optimizer`` and ``use_fp16`` have
# no DINO option (the augmenter, fit and compile set them) and stay in the metadata.
DINO_ARGS = {
    "norm_last_layer": ("norm_last_layer", _flag),
    "warmup_teacher_temp": ("warmup_teacher_temperature", float),
    "teacher_temp": ("teacher_temperature", float),
    "warmup_teacher_temp_epochs": ("warmup_teacher_temperature_epochs", int),
    "momentum_teacher": ("momentum", float),
    "weight_decay": ("weight_decay", float),
    "weight_decay_end": ("final_weight_decay", float),
    "freeze_last_layer": ("freeze_last_layer_epochs", int),
}
# Constants of main_dino.py: DINOLoss's student_temp and center_momentum, and the end of the
# teacher momentum's cosine schedule.
DINO_CONSTANTS = {"student_temperature": 0.1, "center_momentum": 0.9, "final_momentum": 1.0}


def _metadata_value(value):
    if isinstance(value, (int, float, str)):
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value)


def backbone_spec(card, converter, architecture, backbone_config, backbone_class):
    """``(converter name, backbone class name, backbone kwargs)``."""
    from keras_ssl.presets import converters

    if card is not None:
        converter = converter or card["source"].get("converter")
        backbone_class = backbone_class or card["backbone"]["class"]
        config = card["backbone"].get("config")
        if config is None and card["backbone"].get("source_config"):
            config = converters.get(converter).backbone_config(card["backbone"]["source_config"])
    else:
        config = None
    if converter is None:
        raise SystemExit("Give --card or --converter (one of the keras_ssl converters).")
    backbone_class = backbone_class or converters.backbone_class(converter)
    if backbone_config is not None:
        config = backbone_config
    elif architecture is not None:
        config = converters.get(converter).backbone_config({"architecture": architecture})
    if config is None:
        raise SystemExit(
            "The backbone architecture is unknown: give --architecture (e.g. resnet50, "
            "vit_small_patch16_224) or --backbone-config '{...}'."
        )
    return converter, backbone_class, dict(config)


def build_backbone(backbone_class, config, name=None):
    from keras_ssl import backbones

    if name:
        config = {**config, "name": name}
    return getattr(backbones, backbone_class)(**config)


def _preset_metadata(card, extra):
    metadata = {}
    if card is not None:
        metadata.update(
            {
                "method": card.get("method"),
                "license": card.get("license"),
                "paper": card.get("paper"),
                "scores": card.get("scores", {}),
                "source": card.get("full_checkpoint", card["source"]),
                "preset": card["name"],
            }
        )
    metadata.update(extra)
    return metadata


def _preprocessing(card):
    from keras_ssl.presets import Preprocessing

    return Preprocessing.from_card(card["preprocessing"]) if card is not None else None


def convert_backbone(checkpoint, output, card, converter, config, backbone_class):
    """A backbone ``state_dict`` -> backbone preset."""
    import keras_ssl
    from keras_ssl.presets import converters

    state = checkpoint
    for key in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    backbone = build_backbone(backbone_class, config)
    converters.get(converter).convert_weights(to_numpy(state), backbone)
    metadata = _preset_metadata(card, {"converted_with": "tools/convert_checkpoint.py"})
    return keras_ssl.save_to_preset(backbone, output, metadata, _preprocessing(card))


def convert_dino_full(checkpoint, output, card, converter, config, backbone_class, **dino_kwargs):
    """A DINO full checkpoint -> ``keras_ssl.DINO`` preset (student, teacher, heads, centre)."""
    import keras

    import keras_ssl
    from keras_ssl.presets import converters
    from keras_ssl.presets.converters import dino_head

    missing = [k for k in ("student", "teacher") if k not in checkpoint]
    if missing:
        raise SystemExit(f"Not a DINO full checkpoint: no {missing} (keys: {sorted(checkpoint)}).")
    args = _args_dict(checkpoint.get("args"))
    if "vit" in str(args.get("arch", "")) and "patch_size" in args and "patch_size" in config:
        if int(args["patch_size"]) != int(config["patch_size"]):
            raise SystemExit(
                f"The checkpoint was trained with {args['arch']} patch_size {args['patch_size']}, "
                f"the backbone config has patch_size {config['patch_size']}."
            )
    student = strip(to_numpy(checkpoint["student"]), "module.") or to_numpy(checkpoint["student"])
    teacher = to_numpy(checkpoint["teacher"])
    teacher = (
        strip(teacher, "module.") if any(k.startswith("module.") for k in teacher) else teacher
    )
    head = dino_head.head_config(strip(student, "head."))
    kwargs = {
        "output_dim": head["output_dim"],
        "bottleneck_dim": head["bottleneck_dim"],
        "head_layers": head["num_layers"],
        "use_bn_in_head": head["use_bn"],
        **DINO_CONSTANTS,
    }
    if "hidden_dim" in head:
        kwargs["hidden_dim"] = head["hidden_dim"]
    for arg, (option, kind) in DINO_ARGS.items():
        if arg in args:
            kwargs[option] = kind(args[arg])
    kwargs.update(dino_kwargs)
    model = keras_ssl.DINO(build_backbone(backbone_class, config), **kwargs)
    convert = converters.get(converter).convert_weights
    convert(strip(student, "backbone."), model.backbone)
    convert(strip(teacher, "backbone."), model.teacher_backbone)
    dino_head.convert_weights(strip(student, "head."), model.head)
    dino_head.convert_weights(strip(teacher, "head."), model.teacher_head)
    center = checkpoint.get("dino_loss", {}).get("center")
    if center is None:
        raise SystemExit("The checkpoint has no dino_loss.center.")
    model.center.assign(keras.ops.reshape(to_numpy({"c": center})["c"], (1, -1)))
    metadata = _preset_metadata(
        card,
        {
            "method": "DINO",
            "epochs": int(checkpoint["epoch"]) if "epoch" in checkpoint else None,
            "original_args": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in args.items()
                if _metadata_value(v)
            },
            "converted_with": "tools/convert_checkpoint.py --method dino",
            "note": "optimizer state not converted: compile before continuing pretraining",
        },
    )
    return keras_ssl.save_to_preset(model, output, metadata, _preprocessing(card))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--card", help="registered preset whose architecture to use")
    parser.add_argument("--method", choices=("backbone", "dino"), default="backbone")
    parser.add_argument("--converter", help="converter name (default: the card's)")
    parser.add_argument("--architecture", help="e.g. resnet50, vit_small_patch16_224")
    parser.add_argument("--backbone-class", help="keras_ssl.backbones class (default: converter's)")
    parser.add_argument("--backbone-config", type=json.loads, help="backbone kwargs as JSON")
    args = parser.parse_args(argv)

    from keras_ssl.presets import get_card

    card = get_card(args.card) if args.card else None
    converter, backbone_class, config = backbone_spec(
        card, args.converter, args.architecture, args.backbone_config, args.backbone_class
    )
    checkpoint = load_torch_checkpoint(args.checkpoint)
    if args.method == "dino":
        out = convert_dino_full(checkpoint, args.output, card, converter, config, backbone_class)
    else:
        out = convert_backbone(checkpoint, args.output, card, converter, config, backbone_class)
    print(f"Wrote {out}; load it with keras_ssl.from_preset({str(out)!r}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
