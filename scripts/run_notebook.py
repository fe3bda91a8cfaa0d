#!/usr/bin/env python
"""Execute a notebook headless with papermill and write the executed .ipynb atomically.

    python scripts/run_notebook.py notebooks/00_tour.py out/00_tour.ipynb [-p key value ...]
        [--cwd DIR] [--timeout SECONDS] [--kernel python3]

The input is a jupytext notebook (``.py`` in percent format, the form notebooks are kept in git)
or an ``.ipynb``. ``-p`` values are read as Python literals when they parse (``None``, ``True``,
``8``, ``"a b"``, ``[1, 2]``) and as plain strings otherwise (``-p out_dir out/figures``).

The executed notebook only appears at the output path when every cell ran; a reader never sees
a half-written file. On failure the partly executed notebook (with papermill's red banner at the
failing cell) is written beside it as ``<name>.failed.ipynb`` and the exit status is 1.

``run_notebook()`` is the one implementation: ``tests/test_notebooks.py`` imports it from here.
This file deliberately does not import ``workbench`` (the kernel does), so it starts fast.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

# The kernel inherits this environment (unless already set): offline hub, no wandb, and no progress
# bars in saved outputs (TQDM_DISABLE for tqdm.auto; transformers' own bars follow huggingface_hub's
# switch).
NOTEBOOK_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled", "TQDM_DISABLE": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
DEFAULT_TIMEOUT_S = 600
IOPUB_TIMEOUT_S = 120  # seconds to wait for a running cell's output messages


class NotebookError(RuntimeError):
    """A notebook failed; ``str()`` says which cell and why, ``failed_path`` holds the partial output."""

    def __init__(self, message: str, failed_path: Path | None = None):
        super().__init__(message)
        self.failed_path = failed_path


def read_notebook(path: Path, kernel_name: str = "python3"):
    """A NotebookNode from a jupytext ``.py`` (percent format) or an ``.ipynb``.

    A notebook without kernel metadata (a bare ``.py`` with no jupytext header) gets
    ``kernel_name`` with language python, which papermill needs to parse its parameters cell.
    """
    import jupytext

    path = Path(path)
    if not path.is_file():
        raise NotebookError(f"No notebook at {path}.")
    fmt = "ipynb" if path.suffix == ".ipynb" else "py:percent"
    nb = jupytext.read(path, fmt=fmt)
    if not nb.metadata.get("kernelspec", {}).get("name"):
        nb.metadata["kernelspec"] = {"name": kernel_name, "language": "python", "display_name": "Python 3"}
    return nb


def notebook_parameters(path: Path) -> dict:
    """Name -> default (as source text) of the ``parameters`` cell, via papermill."""
    import papermill as pm

    return {name: p["default"] for name, p in pm.inspect_notebook(read_notebook(path)).items()}


def parse_value(text: str):
    """A ``-p`` value: a Python literal when it parses as one, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


@contextmanager
def _kernel_env():
    """NOTEBOOK_ENV defaults in os.environ while the kernel starts (it inherits them), then restored."""
    added = {k: v for k, v in NOTEBOOK_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _write_atomic(path: Path, text: str) -> None:
    from workbench.paths import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


def _finish(nb, source: Path, final: Path) -> str:
    """Serialized notebook with papermill's paths made readable (it records the input node itself)."""
    import nbformat

    meta = nb.metadata.setdefault("papermill", {})
    meta["input_path"] = str(source)
    meta["output_path"] = str(final)
    return nbformat.writes(nb)


def run_notebook(source, output, parameters: dict | None = None, cwd=None, timeout: int = DEFAULT_TIMEOUT_S,
                 kernel_name: str = "python3", log_output: bool = False):
    """Execute ``source`` with papermill; write the executed notebook to ``output``; return it.

    Raises NotebookError (with the failing cell, exception and evalue) when a cell fails; the
    partial notebook then goes to ``<output stem>.failed.ipynb`` and ``output`` is left as it was.
    """
    import nbformat
    import papermill as pm

    source, output = Path(source), Path(output)
    if output.suffix != ".ipynb":
        raise NotebookError(f"The output must be an .ipynb file, got {output}.")
    failed = output.with_name(output.stem + ".failed.ipynb")
    nb = read_notebook(source, kernel_name)
    parameters = dict(parameters or {})
    if parameters:
        known = set(pm.inspect_notebook(nb))
        unknown = sorted(set(parameters) - known)
        if unknown:
            raise NotebookError(f"{source} has no parameter(s) {', '.join(unknown)}; its parameters cell defines "
                                f"{', '.join(sorted(known)) or 'nothing'}.")
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=".partial.ipynb", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            with _kernel_env():
                executed = pm.execute_notebook(
                    nb, str(tmp), parameters=parameters, kernel_name=kernel_name, language="python",
                    cwd=str(cwd if cwd is not None else Path.cwd()), progress_bar=False, log_output=log_output,
                    execution_timeout=timeout, store_widget_state=False, request_save_on_cell_execute=False,
                    # a busy machine can take more than nbclient's default 4 s to deliver a big figure's output
                    iopub_timeout=IOPUB_TIMEOUT_S,
                )
        except pm.PapermillExecutionError as e:
            partial = nbformat.read(tmp, as_version=4) if tmp.exists() and tmp.stat().st_size else None
            if partial is not None:
                _write_atomic(failed, _finish(partial, source, failed))
            where = f"cell {e.cell_index} (In [{e.exec_count}])"
            raise NotebookError(f"{source} failed at {where}: {e.ename}: {e.evalue}",
                                failed if partial is not None else None) from None
        except Exception as e:  # kernel died, timeout, bad kernel name, ...
            raise NotebookError(f"{source} could not be executed: {type(e).__name__}: {e}") from None
        _write_atomic(output, _finish(executed, source, output))
        failed.unlink(missing_ok=True)
        return executed
    finally:
        tmp.unlink(missing_ok=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebook", type=Path, help="jupytext .py (percent format) or .ipynb")
    ap.add_argument("output", type=Path, help="where the executed .ipynb goes")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override a value of the notebook's parameters cell (repeatable)")
    ap.add_argument("--cwd", type=Path, default=None, help="kernel working directory (default: current)")
    ap.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S, help="per-cell timeout in seconds")
    ap.add_argument("--kernel", default="python3", help="kernel name (default python3: this interpreter)")
    ap.add_argument("--log-output", action="store_true", help="echo cell outputs while running")
    args = ap.parse_args(argv)
    params = {name: parse_value(value) for name, value in args.parameter}
    t0 = time.perf_counter()
    try:
        run_notebook(args.notebook, args.output, params, cwd=args.cwd, timeout=args.timeout,
                     kernel_name=args.kernel, log_output=args.log_output)
    except NotebookError as e:
        print(f"error: {e}", file=sys.stderr)
        if e.failed_path is not None:
            print(f"error: the partly executed notebook is in {e.failed_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"{args.notebook} -> {args.output} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
