"""The layering and the boundary of ``Model``, checked on the source (imports and attribute access).

- ``workbench/`` imports none of the other packages; ``interventions/`` and ``efficiency/`` import only
  ``workbench``; ``probes/`` imports ``workbench`` and ``interventions``; ``lab/`` may import all of them.
  Imports hidden inside functions count too.
- Outside ``workbench/`` nothing reads ``.bridge`` or ``.hf`` or a private member of ``Model``.
- Outside ``workbench/`` no hook name is spelled by hand (``"blocks.3..."`` or ``f"blocks.{l}..."``):
  names come from ``workbench.hook_name``.
"""
import ast
from pathlib import Path

import pytest

from workbench.model import Model

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("workbench", "interventions", "efficiency", "probes", "lab")
ALLOWED = {
    "workbench": {"workbench"},
    "interventions": {"workbench", "interventions"},
    "efficiency": {"workbench", "efficiency"},
    "probes": {"workbench", "interventions", "probes"},
    "lab": set(PACKAGES),
}
# code outside workbench/ that must respect the boundary (tests may look inside on purpose)
OUTSIDE = ("interventions", "efficiency", "probes", "lab", "notebooks", "benchmarks", "scripts")


def _private_members_of_model() -> set[str]:
    """Private methods and attributes of ``Model`` (``self._x`` anywhere in its source)."""
    names = {n for n in vars(Model) if n.startswith("_") and not n.startswith("__")}
    for node in ast.walk(ast.parse((ROOT / "workbench" / "model.py").read_text())):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            names.add(node.attr)
    return names


FORBIDDEN_ATTRS = {"bridge", "hf"} | _private_members_of_model()


def _files(*tops: str):
    for top in tops:
        d = ROOT / top
        if d.is_dir():
            yield from sorted(p for p in d.rglob("*.py") if ".ipynb_checkpoints" not in p.parts)


def _imported_packages(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out & set(PACKAGES)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


@pytest.mark.parametrize("package", [p for p in PACKAGES if (ROOT / p).is_dir()])
def test_imports_only_go_down(package):
    bad = []
    for path in _files(package):
        used = _imported_packages(ast.parse(path.read_text(), str(path)))
        for up in sorted(used - ALLOWED[package]):
            bad.append(f"{path.relative_to(ROOT)} imports {up}")
    assert not bad, "Upward imports:\n" + "\n".join(bad)


def test_nothing_outside_workbench_reaches_past_model():
    bad = []
    for path in _files(*OUTSIDE):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRS:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not bad, "Reach-ins past Model (make what they need public API of Model):\n" + "\n".join(bad)


def test_hook_names_come_from_the_specs():
    bad = []
    for path in _files(*OUTSIDE):
        tree = ast.parse(path.read_text(), str(path))
        docs = _docstring_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                if node.value.startswith("blocks.") or ".hook_" in node.value and "\n" not in node.value:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value[:50]!r}")
            elif isinstance(node, ast.JoinedStr) and node.values:
                head = node.values[0]
                if isinstance(head, ast.Constant) and str(head.value).startswith("blocks."):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} f-string 'blocks....'")
    assert not bad, "Hand-written hook names (use workbench.hook_name(short, layer)):\n" + "\n".join(bad)


def test_the_checks_catch_violations(tmp_path):
    """The scanners above flag what they are meant to flag (a check that cannot fail is no check)."""
    src = "import probes\ndef f(model):\n    from lab import x\n    return model.bridge, model._active, f'blocks.{1}.hook_z'\n"
    tree = ast.parse(src)
    assert _imported_packages(tree) == {"probes", "lab"}
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert {"bridge", "_active"} <= attrs & FORBIDDEN_ATTRS
    assert any(isinstance(n, ast.JoinedStr) for n in ast.walk(tree))
