"""The one exception type of the preset system."""


class PresetError(ValueError):
    """A preset cannot be resolved, downloaded, verified or loaded; the message says why
    and what to do."""
