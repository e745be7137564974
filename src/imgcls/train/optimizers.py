"""The optimizers of the recipes that Keras lacks: Nesterov SGD with lookahead weight averaging
(airbench), and the same with Muon updates for the convolution kernels (airbench94_muon).

The classes are built on first use (``optimizers.LookaheadSGD``), so importing this module
stays free of TensorFlow.
"""

from __future__ import annotations

from typing import Any

# Newton-Schulz iteration that orthogonalises a Muon update (Jordan et al. 2024): the quintic's
# coefficients maximise its slope at zero, and 3 steps leave singular values in about
# (0.5, 1.5), which trains as well as the exact U V^T (airbench94_muon.py).
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 3
# Muon's rate over the SGD rate of the plan. `fast` on CIFAR-10 (24 epochs of 79 steps of 512)
# held out 0.8828 at 0.2 and 0.8822 at 0.08 without kernel weight decay (airbench94_muon's
# choice, for 180 steps of 2,000) and 0.8984 at 0.2 with it, against 0.8992 for SGD alone
# (docs/BENCHMARKS.md): the decay keeps the kernels' norms, and so the steps, in proportion.
MUON_LR_RATIO = 0.2
MUON_MOMENTUM = 0.6  # airbench94_muon's (Nesterov)
MUON_WEIGHT_DECAY = True


def orthogonalize(g):
    """``g`` (a 2-D tensor) with its singular values pushed toward 1: Muon's update direction."""
    from keras import ops

    a, b, c = NEWTON_SCHULZ
    x = g / (ops.sqrt(ops.sum(ops.square(g))) + 1e-7)  # the top singular value at most 1
    tall = g.shape[0] > g.shape[1]
    if tall:
        x = ops.transpose(x)
    for _ in range(NEWTON_SCHULZ_STEPS):
        gram = ops.matmul(x, ops.transpose(x))
        x = a * x + ops.matmul(b * gram + c * ops.matmul(gram, gram), x)
    return ops.transpose(x) if tall else x


def _lookahead_sgd_class():
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="imgcls")
    class LookaheadSGD(keras.optimizers.SGD):
        """Nesterov SGD with lookahead weight averaging.

        Every ``lookahead_every`` steps the slow (averaged) weights move toward the fast ones,
        ``slow = m * slow + (1 - m) * fast``, and the fast weights restart from them (airbench,
        Jordan 2024). ``m`` grows as ``lookahead_decay ** every * progress ** 3``, where
        ``progress`` (0 to 1, a variable the trainer sets before each step from its
        :class:`~imgcls.train.setup.LrPlan`, so it follows a time budget too) is how far the
        learning rate has decayed: no averaging early, when progress matters, and strong
        averaging late, when it smooths the noise of the last steps. The slow weights are
        optimizer variables, so checkpoints carry them. ``lookahead_every=0``: no averaging.
        """

        def __init__(
            self,
            learning_rate: Any = 0.01,
            lookahead_every: int = 5,
            lookahead_decay: float = 0.95,
            **kwargs: Any,
        ):
            for key in ("use_ema", "ema_momentum", "ema_overwrite_frequency"):
                kwargs.pop(key, None)  # set from the lookahead arguments, also when deserialised
            every = int(lookahead_every)
            super().__init__(
                learning_rate,
                use_ema=every > 0,
                ema_momentum=0.0,
                ema_overwrite_frequency=every or None,
                **kwargs,
            )
            self.lookahead_every = every
            self.lookahead_decay = float(lookahead_decay)

        def _update_model_variables_moving_average(self, trainable_variables):
            sync = ops.equal(ops.mod(self.iterations + 1, self.lookahead_every), 0)
            m = self.lookahead_decay**self.lookahead_every * ops.cast(self.progress, "float32") ** 3
            for var, slow in zip(
                trainable_variables, self._model_variables_moving_average, strict=True
            ):
                old = slow.value  # a backend array: JAX's where() takes no Keras variable
                mixed = m * ops.cast(old, "float32") + (1.0 - m) * ops.cast(var.value, "float32")
                slow.assign(ops.where(sync, ops.cast(mixed, slow.dtype), old))

        def finalize_variable_values(self, var_list):
            pass  # the model's weights already follow the averaged path; fit() must not reset them

        def build(self, variables):
            super().build(variables)
            self.progress = self.add_variable((), initializer="zeros", name="progress")

        def get_config(self) -> dict[str, Any]:
            return {
                **super().get_config(),
                "lookahead_every": self.lookahead_every,
                "lookahead_decay": self.lookahead_decay,
            }

    return LookaheadSGD


def _lookahead_muon_class():
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="imgcls")
    class LookaheadMuon(_built("LookaheadSGD")):
        """:class:`LookaheadSGD` whose convolution kernels take Muon steps (airbench94_muon).

        A kernel's gradient goes into a Nesterov momentum (``muon_momentum``), is reshaped to
        ``(kh * kw * in, out)`` and orthogonalised (:func:`orthogonalize`), and the kernel
        moves by ``muon_lr_ratio`` times the plan's rate along it, with the optimizer's
        decoupled weight decay if ``muon_weight_decay``. Every other variable (batch-norm
        offsets, the classifier) takes the SGD step. The kernels' momentum lives in
        SGD's momentum slots, so checkpoints have the same variables either way.
        """

        def __init__(
            self,
            learning_rate: Any = 0.01,
            lookahead_every: int = 5,
            lookahead_decay: float = 0.95,
            muon_lr_ratio: float = MUON_LR_RATIO,
            muon_momentum: float = MUON_MOMENTUM,
            muon_weight_decay: bool = MUON_WEIGHT_DECAY,
            **kwargs: Any,
        ):
            super().__init__(learning_rate, lookahead_every, lookahead_decay, **kwargs)
            self.muon_lr_ratio = float(muon_lr_ratio)
            self.muon_momentum = float(muon_momentum)
            self.muon_weight_decay = bool(muon_weight_decay)

        def build(self, variables):
            if self.built:
                return
            self._muon = [len(v.shape) == 4 for v in variables]
            if not self.muon_weight_decay:
                self.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) == 4])
            super().build(variables)
            if not self.momentums:  # SGD keeps none without momentum; Muon always needs its own
                self.momentums = self.add_optimizer_variables(variables, "momentum")

        def update_step(self, gradient, variable, learning_rate):
            index = self._get_variable_index(variable)
            if not self._muon[index]:
                return super().update_step(gradient, variable, learning_rate)
            g = ops.cast(gradient, "float32")
            momentum = self.momentums[index]
            self.assign(momentum, self.muon_momentum * momentum + g)
            g = g + self.muon_momentum * momentum  # Nesterov
            shape = variable.shape
            step = ops.reshape(orthogonalize(ops.reshape(g, (-1, shape[-1]))), shape)
            rate = ops.cast(learning_rate, "float32") * self.muon_lr_ratio
            self.assign_sub(variable, ops.cast(step * rate, variable.dtype))

        def get_config(self) -> dict[str, Any]:
            return {
                **super().get_config(),
                "muon_lr_ratio": self.muon_lr_ratio,
                "muon_momentum": self.muon_momentum,
                "muon_weight_decay": self.muon_weight_decay,
            }

    return LookaheadMuon


_LAZY = {"LookaheadSGD": _lookahead_sgd_class, "LookaheadMuon": _lookahead_muon_class}


def _built(name: str) -> Any:
    """The class ``name`` of :data:`_LAZY`, built (and registered with Keras) once."""
    if name not in globals():
        globals()[name] = _LAZY[name]()
    return globals()[name]


def __getattr__(name: str) -> Any:  # Keras classes are built on first use: importing stays TF-free
    if name in _LAZY:
        return _built(name)
    raise AttributeError(name)
