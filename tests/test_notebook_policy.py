"""Notebook policy: notebooks live in git as jupytext percent-format .py files.

- no .ipynb is tracked under notebooks/ (executed copies go to out/, and .gitignore keeps
  notebooks/*.ipynb, e.g. the pair JupyterLab writes, out of git);
- every notebooks/*.py is in percent format, has a cell tagged ``parameters`` (so papermill and
  ``scripts/run_notebook.py -p`` can drive it) and survives a jupytext round trip unchanged.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


def _git(*args: str) -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked-files policy cannot be checked")
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .py notebook"


def test_no_ipynb_tracked_under_notebooks():
    tracked = [p for p in _git("ls-files", "--", "notebooks") if p.endswith(".ipynb")]
    assert tracked == [], f"tracked .ipynb under notebooks/ (keep the jupytext .py instead): {tracked}"
    # An .ipynb there that git would pick up on `git add` (i.e. not ignored) breaks the policy too.
    addable = [p for p in _git("ls-files", "--others", "--exclude-standard", "--", "notebooks")
               if p.endswith(".ipynb")]
    assert addable == [], f".ipynb under notebooks/ not covered by .gitignore: {addable}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_percent_format(path: Path):
    text = path.read_text(encoding="utf-8")
    fmt, _ = jupytext.formats.guess_format(text, ".py")
    assert fmt == "percent", f"{path.name} is not in jupytext percent format (got {fmt!r})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_parameters_cell(path: Path):
    nb = jupytext.read(path, fmt="py:percent")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged parameters, found {len(tagged)}"
    assert tagged[0].cell_type == "code"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_round_trips(path: Path):
    text = path.read_text(encoding="utf-8")
    nb = jupytext.reads(text, fmt="py:percent")
    assert jupytext.writes(nb, fmt="py:percent") == text, "py:percent -> notebook -> py:percent changed the file"
    via_ipynb = jupytext.reads(jupytext.writes(nb, fmt="ipynb"), fmt="ipynb")
    assert jupytext.writes(via_ipynb, fmt="py:percent") == text, "py -> ipynb -> py changed the file"
