"""The keyword arguments a backbone hands on to `keras.Model`, checked.

A functional `keras.Model` keeps `name` and `trainable` and ignores every other keyword
without a word, so a misspelled backbone argument (`ViT(outptu="tokens")`) or one the
backbone does not take (`ResNet18(dtpye="mixed_bfloat16")`) would build the default model.
"""

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
