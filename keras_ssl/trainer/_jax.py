"""The JAX train step: stateless, every variable passed in and returned.

Method code assigns variables as on any backend (`teacher.assign(...)`,
`queue.assign(...)`); here it runs inside a `keras.StatelessScope` whose
mapping holds the step's current values, and the assigned values are
collected from the scope and returned as the new state. The optimizer's
variables are in every mapping so that schedules read the live step count,
not the value frozen when the step was traced.

Keras's JAX loops also detach every variable's value while they run (the values
live in the loop's state) and re-attach the last state when they end. A call
that fails before its first step returns (an error while tracing, Ctrl-C while
compiling) has no state to re-attach, and `evaluate` and `predict` re-attach
nothing on failure: the model would be left without weights. `BackendStep` puts
the values back.
"""

import jax
import keras


def _run_stateless(fn, pairs):
    """Calls `fn()` with `pairs` of (variable, value) bound; returns (result, new values)."""
    with keras.StatelessScope(state_mapping=pairs) as scope:
        result = fn()
    new_values = []
    for variable, value in pairs:
        current = scope.get_current_value(variable)
        new_values.append(value if current is None else current)
    return result, new_values


class _DetachedValues:
    def __init__(self):
        self.pairs = []


class BackendStep:
    def fit(self, *args, **kwargs):
        return self._keeping_values_on_failure(super().fit, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        return self._keeping_values_on_failure(super().evaluate, *args, **kwargs)

    def predict(self, *args, **kwargs):
        return self._keeping_values_on_failure(super().predict, *args, **kwargs)

    def _purge_model_variables(self, **groups):
        # Keras calls this before a loop's first step (in `fit`, each epoch's); donation
        # frees these buffers once a step has run, so keeping the references costs no memory.
        pairs = []
        for group, selected in groups.items():
            if selected:
                # Only `fit` detaches the optimizer's: `predict` runs uncompiled models too.
                variables = (
                    self.optimizer.variables
                    if group == "optimizer_variables"
                    else getattr(self, group)
                )
                pairs += [(v, v._value) for v in variables]
        detached = getattr(self, "_detached_values", None)  # None outside fit/evaluate/predict
        if detached is not None:
            detached.pairs = pairs
        super()._purge_model_variables(**groups)

    def _keeping_values_on_failure(self, run, *args, **kwargs):
        outer = getattr(self, "_detached_values", None)  # fit's, around its validation
        self._detached_values = _DetachedValues()  # not a list: Keras would track its variables
        try:
            return run(*args, **kwargs)
        except BaseException:
            self.jax_state_sync()  # the last step's state, where a step ran
            for variable, value in self._detached_values.pairs:
                if variable._value is None:
                    variable._value = value
            raise
        finally:
            self._detached_values = outer

    def _stateless_pairs(self, trainable, non_trainable, optimizer_variables=None):
        pairs = list(zip(self.trainable_variables, trainable, strict=True))
        pairs += list(zip(self.non_trainable_variables, non_trainable, strict=True))
        if optimizer_variables is not None:
            pairs += list(zip(self.optimizer.variables, optimizer_variables, strict=True))
        return pairs

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        n_trainable, n_non_trainable = len(trainable), len(non_trainable)

        def loss_fn(trainable, non_trainable):
            def forward():
                loss, logs = self._forward_and_loss(data, training=True)
                return loss, logs, self.optimizer.scale_loss(loss)

            pairs = self._stateless_pairs(trainable, non_trainable, optimizer_variables)
            (loss, logs, scaled_loss), values = _run_stateless(forward, pairs)
            new_non_trainable = values[n_trainable : n_trainable + n_non_trainable]
            return scaled_loss, (loss, logs, new_non_trainable)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (loss, logs, non_trainable)), gradients = grad_fn(trainable, non_trainable)
        pairs = self._stateless_pairs(trainable, non_trainable, optimizer_variables)
        gradients, _ = _run_stateless(lambda: self.transform_gradients(gradients), pairs)
        trainable, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, gradients, trainable
        )

        pairs = self._stateless_pairs(trainable, non_trainable, optimizer_variables)
        _, values = _run_stateless(self._after_update, pairs)
        # The after-step may change trainable weights too (DINO's decoupled weight decay).
        trainable = values[:n_trainable]
        non_trainable = values[n_trainable : n_trainable + n_non_trainable]

        logs, metrics_variables = self._update_trackers_stateless(metrics_variables, loss, logs)
        return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)

    def test_step(self, state, data):
        trainable, non_trainable, metrics_variables = state
        n_trainable, n_non_trainable = len(trainable), len(non_trainable)

        def forward():
            return self._forward_and_loss(data, training=False)

        pairs = self._stateless_pairs(trainable, non_trainable)
        (loss, logs), values = _run_stateless(forward, pairs)
        non_trainable = values[n_trainable : n_trainable + n_non_trainable]
        logs, metrics_variables = self._update_trackers_stateless(metrics_variables, loss, logs)
        return logs, (trainable, non_trainable, metrics_variables)

    def _update_trackers_stateless(self, metrics_variables, loss, logs):
        pairs = list(zip(self.metrics_variables, metrics_variables, strict=True))
        return _run_stateless(lambda: self._update_trackers(loss, logs), pairs)
