"""Search spaces: what ``imgcls tune`` may change, in ranges that make sense for each model.

A space maps a parameter name to its range, in the form a ``--space`` file uses (JSON or TOML):

    {"lr": {"min": 1e-4, "max": 1e-2, "log": true},   # float (log scale)
     "epochs": {"min": 5, "max": 30},                  # int: both bounds are integers
     "batch_size": {"values": [32, 64, 128]}}          # a choice

Names are the training settings in :data:`SETTINGS` or keyword arguments of the model's
builder (``dropout``, ``widths``, ...), which go into ``model_args``. Each model's default space
is registered beside its recipe (``register_model(space=...)``); a ``--space`` file narrows it
(its entries replace the model's, the others stay) or, with ``replace = true``, replaces it.
The first trial is always the recipe's own settings, so a search can only match or beat them.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgcls.errors import ImgclsError, check

# Training settings a search may change, with the values each accepts: (low, high, integer).
SETTINGS = {
    "lr": (0.0, 10.0, False),
    "weight_decay": (0.0, 1.0, False),
    "label_smoothing": (0.0, 1.0, False),
    "batch_size": (1, 65536, True),
    "epochs": (1, 10000, True),
}
DROPOUT = (0.0, 1.0, False)  # any builder argument whose name holds "dropout"


@dataclass(frozen=True)
class Param:
    """One searched parameter: a float or int range (``log`` scale or linear), or ``values``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    values: tuple | None = None
    given: bool = False  # from a --space file (kept as given), not the model's registered space

    def describe(self) -> str:
        if self.values is not None:
            return f"{self.name} in {list(self.values)}"
        low, high = (int(self.low), int(self.high)) if self.integer else (self.low, self.high)
        return f"{self.name} in [{low}, {high}]" + (" (log)" if self.log else "")

    def widened(self, value: Any) -> Param:
        """This range grown to hold ``value``."""
        if self.values is not None:
            if value in self.values:
                return self
            return dataclasses.replace(self, values=tuple(sorted((*self.values, value))))
        low, high = min(self.low, value), max(self.high, value)
        return dataclasses.replace(self, low=float(low), high=float(high))

    def clip(self, value: Any) -> Any:
        """``value`` moved into the range (a default outside a narrowed range)."""
        if self.values is not None:
            return value if value in self.values else self.values[0]
        value = min(max(value, self.low), self.high)
        return int(round(value)) if self.integer else float(value)

    def add_to(self, hp, default: Any) -> None:
        """Declare this parameter on a KerasTuner ``HyperParameters`` with ``default``."""
        default, sampling = self.clip(default), "log" if self.log else "linear"
        if self.values is not None:
            hp.Choice(self.name, list(self.values), default=default)
        elif self.integer:
            hp.Int(self.name, int(self.low), int(self.high), sampling=sampling, default=default)
        else:
            hp.Float(self.name, self.low, self.high, sampling=sampling, default=default)


def parse_space(entries: dict[str, Any], where: str, given: bool = False) -> dict[str, Param]:
    """Turn ``{name: {"min", "max", "log"} | {"values"}}`` into :class:`Param` objects.

    Raises:
        ImgclsError: an entry that is not a range or a list of values, or a contradictory one.
    """
    check(isinstance(entries, dict) and entries, f"{where} must name at least one parameter")
    params = {}
    for name, spec in entries.items():
        field = f"{where}: `{name}`"
        check(
            isinstance(spec, dict)
            and (set(spec) <= {"min", "max", "log"} or set(spec) == {"values"}),
            f"{field} must be {{min, max[, log]}} or {{values}}. Received: {spec!r}",
        )
        if "values" in spec:
            values = spec["values"]
            check(
                isinstance(values, list)
                and values
                and all(isinstance(v, int | float | str | bool) for v in values)
                and len(set(map(repr, values))) == len(values),
                f"{field}: `values` must be a non-empty list of numbers or strings without "
                f"repeats. Received: {values!r}",
            )
            params[name] = Param(name, values=tuple(values), given=given)
            continue
        low, high, log = spec.get("min"), spec.get("max"), bool(spec.get("log", False))
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
        check(numbers, f"{field} needs numbers `min` and `max`. Received: {spec!r}")
        check(low < high, f"{field}: `min` must be below `max`. Received: min={low}, max={high}")
        check(not log or low > 0, f"{field}: a log range needs `min` > 0. Received: min={low}")
        integer = isinstance(low, int) and isinstance(high, int)
        params[name] = Param(name, float(low), float(high), log, integer, given=given)
    return params


def load_space_file(path: str | Path) -> tuple[dict[str, Param], bool]:
    """Read a ``--space`` file: ``(params, replace)``.

    Raises:
        ImgclsError: the file is missing, unreadable, empty or contradictory.
    """
    from imgcls.io import read_table_file

    data = read_table_file(path, "--space", "parameters")
    replace = data.pop("replace", False)
    check(isinstance(replace, bool), f"`--space` file {path}: `replace` must be true or false")
    return parse_space(data, f"`--space` file {path}", given=True), replace


def model_space(model: str, space_file: str | Path | None = None) -> dict[str, Param]:
    """The space searched for ``model``: its registered one, narrowed or replaced by a file.

    Raises:
        ImgclsError: an unknown parameter, or a range outside what the model accepts.
    """
    from imgcls.models import get_spec

    spec = get_spec(model)
    params = parse_space(dict(spec.space), f"model {model}'s space") if spec.space else {}
    if space_file is not None:
        extra, replace = load_space_file(space_file)
        params = extra if replace else {**params, **extra}
    check(params, f"nothing to search for model {model}: give a `--space` file")
    builder = builder_defaults(model)
    where = f"`--space` file {space_file}" if space_file else f"model {model}'s space"
    for p in params.values():
        limits = SETTINGS.get(p.name) or (DROPOUT if "dropout" in p.name else None)
        if p.name not in SETTINGS:
            check(
                p.name in builder,
                f"{where}: unknown parameter `{p.name}`; expected one of "
                f"{sorted(SETTINGS)} or an argument of model {model}: {sorted(builder)}",
            )
        if limits is None:
            continue
        low, high, integer = limits
        values = list(p.values) if p.values is not None else [p.low, p.high]
        inside = all(
            isinstance(v, int | float)
            and low <= v <= high
            and (not integer or float(v).is_integer())
            for v in values
        )
        check(
            inside and (p.name not in ("lr",) or min(values) > 0),
            f"{where}: `{p.name}` must lie in [{low}, {high}]"
            + (" (integers)" if integer else "")
            + f" for model {model}. Received: {p.describe()}",
        )
    return params


def builder_defaults(model: str) -> dict[str, Any]:
    """Keyword arguments of ``model``'s builder and their defaults."""
    from imgcls.models import get_spec

    signature = inspect.signature(get_spec(model).build)
    return {
        name: p.default
        for name, p in list(signature.parameters.items())[2:]  # after input_shape, num_classes
        if p.default is not inspect.Parameter.empty
    }


def first_trial(
    model: str, params: dict[str, Param], resolved: dict[str, Any]
) -> tuple[dict[str, Param], dict[str, Any]]:
    """The space and the first trial's values: the recipe's, as ``imgcls train`` resolves them
    for this data (or the builder's defaults). A registered range grows to hold its recipe's
    value (on a small data set ``imgcls train`` shrinks the batch, and an SGD rate with it), so
    the first trial is exactly what ``imgcls train`` would run; a range from a ``--space`` file
    stays as given and the value moves into it."""
    builder = builder_defaults(model)
    space, values = dict(params), {}
    for name, p in params.items():
        value = resolved.get(name) if name in SETTINGS else builder.get(name)
        if value is None or isinstance(value, list | tuple):
            value = p.values[0] if p.values is not None else p.low
        if not p.given:
            space[name] = p = p.widened(value)
        values[name] = p.clip(value)
    return space, values


def train_flags(values: dict[str, Any]) -> list[str]:
    """``imgcls train`` flags that set ``values`` (training settings and model arguments)."""
    flags = []
    for name, value in values.items():
        if name.startswith("tuner/"):
            continue
        if name in SETTINGS:
            flags += [f"--{name.replace('_', '-')}", _number(value)]
        else:
            flags += ["--model-arg", f"{name}={json.dumps(value)}"]
    return flags


def _number(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        raise ImgclsError(f"a searched value is not finite: {value}")
    return repr(value) if isinstance(value, float) else str(value)
