"""Training curves: one panel per logged metric against epochs."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(history, path, title=None, epochs=None):
    """Writes a PNG with one panel per logged metric (loss, accuracy, ...) against epochs.

    Args:
        history: `keras.callbacks.History` or its `.history` dict
            (metric name -> list of per-epoch values).
        path: output PNG path.
        title: optional figure title.
        epochs: optional ``{metric name: epochs}`` for metrics not logged every epoch
            (e.g. ``KNNMonitor(every_n_epochs=5)``); other metrics are drawn at
            ``1, 2, ...``.

    Example:

    >>> plot_history({"loss": [3.0, 2.5, 2.2]}, "/tmp/curves.png")
    """
    history = getattr(history, "history", history)
    names = [name for name, values in history.items() if len(values)]
    figure, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.4), squeeze=False)
    for axis, name in zip(axes[0], names, strict=False):
        values = history[name]
        x = (epochs or {}).get(name) or range(1, len(values) + 1)
        axis.plot(list(x)[: len(values)], values[: len(x)], marker="o", markersize=3)
        axis.set_xlabel("epoch")
        axis.set_title(name.replace("_", " "))
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
