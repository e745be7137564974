"""The package's shape: imports follow the data, no cycles, small files and functions.

Read from the source with ``ast`` (every import counts, also those inside functions), so a
backward import fails here before it can tangle the layers (docs/DESIGN.md draws them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "imgcls"
# The stages in the order data flows through them; a module may import its own stage and the
# ones before it, never a later one. The saved-model contract (bundle) sits below training:
# train writes it, every later stage reads it.
STAGES = [
    ["imgcls.errors"],
    ["imgcls.io"],
    ["imgcls.config"],
    ["imgcls.backend"],
    ["imgcls._register"],
    ["imgcls.data"],
    ["imgcls.models"],
    ["imgcls.bundle"],
    ["imgcls.engine"],
    ["imgcls.train"],
    ["imgcls.predict"],
    ["imgcls.evaluate", "imgcls.suggest"],
    ["imgcls.export"],
    ["imgcls.batch"],
    ["imgcls.serve"],
    ["imgcls.tune"],
    ["imgcls.workflow", "imgcls"],  # the Python API
    ["imgcls.cli", "imgcls.__main__"],
]
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
PACKAGES = {module_name(p) for p in PACKAGE.rglob("__init__.py")} | {
    module_name(p.parent / "x.py").rpartition(".")[0] for p in PACKAGE.rglob("*.py")
}


def imported(module: str) -> set[str]:
    """The imgcls modules ``module`` imports, anywhere in its code (``from pkg import sub``
    counts as importing the module ``pkg.sub``)."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "imgcls"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                here = here[: len(here) - node.level + 1]
                base = ".".join([*here, *([base] if base else [])])
            if base.split(".")[0] != "imgcls":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES or sub in PACKAGES else base)
    out.discard(module)
    return out


def stage_of(module: str) -> int:
    best = None
    for i, names in enumerate(STAGES):
        for name in names:
            inside = module == name or (name != "imgcls" and module.startswith(name + "."))
            if inside and (best is None or len(name) > best[1]):
                best = (i, len(name))
    assert best is not None, f"{module} belongs to no stage; add it to STAGES"
    return best[0]


def test_every_module_belongs_to_a_stage():
    for module in MODULES:
        stage_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_data(module):
    here = stage_of(module)
    later = sorted(m for m in imported(module) if stage_of(m) > here)
    assert not later, f"{module} (stage {STAGES[here][0]}) imports later stage(s): " + ", ".join(
        f"{m} ({STAGES[stage_of(m)][0]})" for m in later
    )


def test_no_circular_imports():
    graph = {m: {d for d in imported(m) if d in MODULES} for m in MODULES}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_files_and_functions_stay_small():
    too_long = []
    for path in MODULES.values():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n") + 1
        if lines > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(SRC)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, "over the size limits: " + "; ".join(too_long)


def test_a_backward_import_is_caught(tmp_path, monkeypatch):
    """The rule can fail: a data module importing the trainer inside a function is caught."""
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from imgcls.train.trainer import Trainer\n")
    monkeypatch.setitem(MODULES, "imgcls.data.fake", fake)
    with pytest.raises(AssertionError, match="imgcls.train.trainer"):
        test_imports_follow_the_data("imgcls.data.fake")
