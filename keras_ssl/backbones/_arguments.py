"""The keyword arguments a backbone hands on to `keras.Model`, checked, and its `dtype`.

A functional `keras.Model` keeps `name` and `trainable` and ignores every other keyword
without a word, so a misspelled backbone argument (`ViT(outptu="tokens")`) or one the
backbone does not take (`ResNet18(dtpye="mixed_bfloat16")`) would build the default model.
"""

import keras

MODEL_ARGUMENTS = ("name", "trainable")


def check_model_arguments(backbone, kwargs):
    """Raises a TypeError naming each of `kwargs` that `keras.Model` would drop.

    Args:
        backbone: the backbone class's name, for the message.
        kwargs: the keyword arguments the backbone did not take itself.
    """
    unknown = sorted(set(kwargs) - set(MODEL_ARGUMENTS))
    if not unknown:
        return
    raise TypeError(
        f"{backbone} got unexpected keyword argument(s) {', '.join(map(repr, unknown))}: "
        f"besides its own arguments it takes only {' and '.join(MODEL_ARGUMENTS)}. Check "
        f"the spelling against {backbone}'s docstring."
    )


def layer_policy(dtype):
    """The dtype policy for every layer of a functional backbone built with `dtype` (None:
    each layer takes the global policy). keras.Model's functional constructor ignores
    `dtype`, so the backbone hands this to each layer itself."""
    return None if dtype is None else keras.dtype_policies.get(dtype)


def adopt_policy(model, policy):
    """After `keras.Model.__init__`: `policy` (from `layer_policy`) as the model's own, and
    its name kept as the `dtype` that `get_config` reports (`model._dtype_argument`)."""
    if policy is not None:
        model.dtype_policy = policy
    model._dtype_argument = None if policy is None else policy.name
