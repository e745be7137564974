"""Register imgcls's Keras layers with Keras as soon as Keras is imported (not before).

Importing Keras imports its backend (TensorFlow: seconds), so ``import imgcls`` does not; but a
run's ``model.keras`` holds imgcls layers, which Keras must know before it deserialises one.
:func:`register_when_keras_loads` imports :mod:`imgcls.models.layers` now if Keras is loaded,
else right after ``import keras`` completes.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

LAYERS = "imgcls.models.layers"


class _AfterKerasImport(importlib.abc.MetaPathFinder):
    """Finds ``keras`` through the other finders, then imports the layers after it executes."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            importlib.import_module(LAYERS)

        spec.loader.exec_module = exec_module
        return spec


def register_when_keras_loads() -> None:
    if "keras" in sys.modules:
        importlib.import_module(LAYERS)
    elif not any(isinstance(f, _AfterKerasImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterKerasImport())
