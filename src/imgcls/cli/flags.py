"""Command-line flags generated from the settings dataclasses, so flags never drift from them:
:class:`~imgcls.config.TrainConfig` (train), :class:`~imgcls.config.PrepareConfig` (prepare),
:class:`~imgcls.tune.TuneSettings` (tune) and :class:`~imgcls.serve.ServeConfig` (serve).

Each field becomes ``--field-name`` with its type, ``help``, ``choices`` and ``metavar`` from
the field's metadata; ``"cli": False`` leaves a field out. Every flag defaults to ``None``, so
:func:`given` returns exactly what was typed and the dataclass keeps the one default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any

SPLIT_GROUP = "labels and split (shared by train, tune and prepare)"


def add_flags(p: argparse.ArgumentParser, settings: type) -> None:
    """One flag per field of the dataclass ``settings``; the split fields in their own group."""
    from imgcls.config import SplitSettings

    hints = typing.get_type_hints(settings)
    split = {f.name for f in dataclasses.fields(SplitSettings)}
    group = p.add_argument_group(SPLIT_GROUP) if issubclass(settings, SplitSettings) else None
    for f in dataclasses.fields(settings):
        meta = dict(f.metadata)
        if not meta.pop("cli", True):
            continue
        target = group if group is not None and f.name in split else p
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        if not any(f.default is v for v in (None, False, dataclasses.MISSING)):
            meta["help"] = f"{meta['help']} (default {f.default})"
        target.add_argument(flag, dest=f.name, default=None, **_kind(hints[f.name]), **meta)


def _kind(hint: Any) -> dict[str, Any]:
    """argparse's ``type``/``nargs``/``action`` for a field's type hint."""
    args = typing.get_args(hint)
    if hint is bool or bool in args:
        return {"action": "store_true"}
    if tuple[int, int] in (hint, *args):
        return {"type": int, "nargs": 2, "metavar": ("H", "W")}
    if tuple[str, ...] in (hint, *args):
        return {"type": comma_list}
    if dict in (typing.get_origin(hint), hint):
        return {"action": "append", "type": key_value, "metavar": "KEY=VALUE"}
    return {"type": next(t for t in (int, float, str) if t is hint or t in args)}


def given(args: argparse.Namespace, settings: type) -> dict[str, Any]:
    """The fields of ``settings`` that were given on the command line, as the dataclass takes
    them (``--image-size H W`` a tuple, ``--model-arg`` pairs a dict)."""
    out = {}
    for f in dataclasses.fields(settings):
        if not f.metadata.get("cli", True):
            continue
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            value = dict(value)  # KEY=VALUE pairs
        elif isinstance(value, list):
            value = tuple(value)
        out[f.name] = value
    return out


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(","))


def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with the value parsed as JSON (a list becomes a tuple), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"must look like KEY=VALUE. Received: {text}")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    return key, tuple(parsed) if isinstance(parsed, list) else parsed
