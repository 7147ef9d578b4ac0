"""`TerminateOnNaN`: stops training at the first non-finite logged value and says which."""

import math
import warnings

import keras
import numpy as np

__all__ = ["NonFiniteLossWarning", "TerminateOnNaN"]


class NonFiniteLossWarning(UserWarning):
    """Warned by `TerminateOnNaN` when it stops training."""


def _as_float(value):
    try:
        return float(np.asarray(keras.ops.convert_to_numpy(value), dtype="float64").reshape(()))
    except (TypeError, ValueError):
        return None  # not a scalar (e.g. a learning-rate schedule object): not watched


class TerminateOnNaN(keras.callbacks.Callback):
    """Stops `fit` at the first batch whose logged loss or loss term is NaN or infinite.

    Keras' own `keras.callbacks.TerminateOnNaN` watches `loss` only. A method's loss is
    often a sum of terms logged beside it (DINOv2: `dino_loss`, `ibot_loss`,
    `koleo_loss`), and knowing which term went bad first is what tells the cause: a
    KoLeo blow-up (duplicate embeddings, too small a batch), an iBOT/DINO softmax
    overflow (a temperature too low for the precision, a learning rate too high), or
    data (a NaN image makes every term NaN). At the end of every batch the callback
    reads the logs (running means over the epoch, so a non-finite step stays visible),
    and at the first non-finite value it stops training, records what it found in
    `self.report` (`epoch`, `batch`, `terms`: the non-finite terms, `values`: every
    logged value) and warns (`NonFiniteLossWarning`) or, with `raise_error=True`, raises
    a `FloatingPointError` with the same message.

    Reading the logs every batch waits for the step to finish (as Keras' callback does);
    `check_every` batches checks less often.

    Args:
        monitor: names of the logs to watch; `None` (default) watches every logged scalar.
        raise_error: raise a `FloatingPointError` instead of warning and stopping quietly.
        check_every: check every `check_every` batches (1).

    Example:

    ```python
    import numpy as np
    import keras, keras_ssl
    from keras_ssl.callbacks.terminate_on_nan import TerminateOnNaN

    model = keras_ssl.SimCLR(
        keras_ssl.backbones.ConvNet(widths=(8, 16), input_channels=1),
        augmenter=keras_ssl.augment.SimCLRAugment.small_images(16),
        projection_dim=8,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    guard = TerminateOnNaN()
    model.fit(np.random.uniform(size=(32, 16, 16, 1)), batch_size=16, callbacks=[guard])
    print(guard.report)  # None: every logged value stayed finite
    ```
    """

    def __init__(self, monitor=None, raise_error=False, check_every=1):
        super().__init__()
        self.monitor = None if monitor is None else tuple(monitor)
        self.raise_error = bool(raise_error)
        self.check_every = max(int(check_every), 1)
        self.report = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self.report = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.check_every:
            return
        self._check(logs or {}, batch)

    def on_epoch_end(self, epoch, logs=None):
        if self.report is None:
            self._check(logs or {}, None)

    def _check(self, logs, batch):
        names = self.monitor if self.monitor is not None else tuple(logs)
        values = {}
        for name in names:
            if name in logs:
                value = _as_float(logs[name])
                if value is not None:
                    values[name] = value
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if not bad:
            return
        # The total follows its terms: name the terms first, the total last.
        bad.sort(key=lambda name: name == "loss")
        self.report = {"epoch": self._epoch, "batch": batch, "terms": bad, "values": values}
        where = f"epoch {self._epoch + 1}" + ("" if batch is None else f", batch {batch + 1}")
        shown = ", ".join(f"{name}={values[name]}" for name in values)
        message = (
            f"Non-finite {', '.join(bad)} at {where} ({shown}); training stopped. "
            "A term that goes bad alone points at its loss (a temperature too low, a batch "
            "too small for KoLeo), all terms together at the data (NaN images) or at "
            "the optimizer: lower the learning rate, clip gradients (clipnorm) or resume "
            "from the last checkpoint."
        )
        self.model.stop_training = True
        if self.raise_error:
            raise FloatingPointError(message)
        warnings.warn(message, NonFiniteLossWarning, stacklevel=2)
