"""Pretrained presets: load published SSL weights on any backend, save and share your own.

* :func:`from_preset` loads a registered preset (``list_presets()``; one JSON card
  each in the top-level ``presets/`` folder), a Hugging Face repository
  (``"hf://org/repo@revision"``) or a local preset directory, and returns the model
  with its evaluation :class:`Preprocessing`. Hub checkpoints in timm / transformers /
  torchvision layout are converted on load (``keras_ssl.presets.converters``) from
  safetensors read with NumPy: no torch and no unpickling at run time.
* :func:`save_to_preset` writes a Keras-native preset (``config.json``,
  ``model.weights.h5``, ``metadata.json``), of a backbone or of a whole method model
  (e.g. ``keras_ssl.DINO``, whose teacher, centre and optimizer state survive).
* :func:`upload_preset` publishes such a directory on the Hub.

Example:

```python
import numpy as np
import keras_ssl

model, preprocess = keras_ssl.from_preset("dino_vits16")
features = model(preprocess(np.zeros((1, 256, 256, 3), "uint8")))  # (1, 384)
```
"""

from keras_ssl.presets import converters
from keras_ssl.presets.errors import PresetError
from keras_ssl.presets.loader import LoadedPreset, from_preset
from keras_ssl.presets.native import save_to_preset, upload_preset
from keras_ssl.presets.preprocessing import Preprocessing
from keras_ssl.presets.registry import add_cards_dir, get_card, list_presets, remove_cards_dir

__all__ = [
    "LoadedPreset",
    "PresetError",
    "Preprocessing",
    "add_cards_dir",
    "converters",
    "from_preset",
    "get_card",
    "list_presets",
    "remove_cards_dir",
    "save_to_preset",
    "upload_preset",
]
