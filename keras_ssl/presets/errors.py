"""The one exception type of the preset system, and a hint for its messages."""

import difflib


class PresetError(ValueError):
    """A preset cannot be resolved, downloaded, verified or loaded; the message says why
    and what to do."""


def closest(word, choices):
    """The choice ``word`` most likely misspells (case ignored), or None."""
    by_lower = {choice.lower(): choice for choice in choices}
    match = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return by_lower[match[0]] if match else None
