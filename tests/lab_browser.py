"""Drive a real JupyterLab in a real browser: the machinery behind ``tests/test_browser.py``.

- ``LabServer``: JupyterLab started on a free loopback port with a random token, rooted in a
  temporary folder, kernels from this interpreter (the project venv), the project's shipped Lab
  settings (``jupyter-config/``, the same ones ``make lab`` passes) plus test-only user settings
  (no news toast). ``close()`` shuts every kernel down and stops the server, and kills whatever
  survives (kernels run in their own process sessions, so they are tracked by pid).
- ``launch_chromium``: Playwright's Chromium driver pointed at the system Chromium (Debian's
  ``chromium``, installed by ``make system``); Playwright's own browser download is never used.
- ``LabPage``: one browser page on the server: open a notebook, run all cells, read the outputs
  and the kernel status, and collect console errors.
- ``ViewSpec`` / ``check_view``: what a rendered interactive view must show (plotly figures,
  controls), the interactions to replay and the figures each must change, checked in the page;
  every failure raises ``ViewCheckError`` with what was seen.

Everything waits with an explicit timeout: ``page.evaluate`` has none of its own, and a Lab
selector that never appears must fail the test, not hang it.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB_CONFIG = ROOT / "jupyter-config"  # shipped Lab settings; `make lab` puts it on JUPYTER_CONFIG_PATH
VIEWPORT = {"width": 1280, "height": 800}  # a laptop window; Lab's default layout (file browser open)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
# Test-only user settings: no "get Jupyter news?" toast over the screenshots, no update check.
TEST_USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                       "checkForUpdates": False},
}
KERNEL_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled", "TQDM_DISABLE": "1",
              "HF_HUB_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ViewCheckError(AssertionError):
    """A view failed a check in the browser (did not render, did not update, logged an error)."""


# ------------------------------------------------------------------------------------------ browser
NO_CHROMIUM = (
    "No Chromium found for the browser tests (they drive the system Chromium, never a downloaded one). "
    "Install it with `make system` (Debian: `apt-get install -y chromium`), or point BROWSER_PATH at a "
    "Chromium/Chrome binary. To run the other tests without a browser: pytest -m 'not browser'.")


def chromium_path() -> str | None:
    """The system Chromium the tests drive (honours ``BROWSER_PATH``), or None."""
    from workbench.figures import find_browser

    return find_browser()


def launch_chromium(playwright):
    """A headless system Chromium under Playwright; raises with a clear message when there is none."""
    path = chromium_path()
    if path is None:
        raise RuntimeError(NO_CHROMIUM)
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True, timeout=60_000)


# ------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """JupyterLab serving ``root`` on 127.0.0.1 with a token; see the module docstring.

    ``work`` holds the server log, user settings and workspaces. ``env`` is added to the
    server's environment (kernels inherit it).
    """

    def __init__(self, root: Path, work: Path, env: dict | None = None):
        self.root, self.work = Path(root), Path(work)
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.work / "server.log"
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._known_pids: set[int] = set()

    def start(self, timeout: float = 120.0) -> "LabServer":
        settings = self.work / "user-settings"
        for rel, value in TEST_USER_SETTINGS.items():
            path = settings / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))
        env = dict(os.environ)
        env.update(KERNEL_ENV)
        env.update(self.env)
        # Kernels import this checkout (not whatever the venv's editable install points at).
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
            [str(LAB_CONFIG)] + [p for p in env.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep) if p])
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               f"--ServerApp.root_dir={self.root}", f"--IdentityProvider.token={self.token}",
               "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={settings}",
               f"--LabApp.workspaces_dir={self.work / 'workspaces'}", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        self.work.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with status {self.proc.returncode} before answering:\n"
                                   f"{self.log_tail()}")
            try:
                self.api("GET", "/api/status")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log_tail()}")
                time.sleep(0.3)

    def api(self, method: str, path: str, timeout: float = 10.0):
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def lab_url(self, path: str = "") -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.url}/lab{path}{sep}token={self.token}"

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return "(no server log)"
        return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-n:])

    def _remember_children(self) -> None:
        try:
            import psutil

            self._known_pids |= {c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)}
        except Exception:  # psutil missing or the server already gone
            pass

    def kernels(self) -> list[dict]:
        return self.api("GET", "/api/kernels")

    def shutdown_kernels(self) -> None:
        """Shut down every running kernel (their pids are remembered for close())."""
        self._remember_children()
        for k in self.kernels():
            try:
                self.api("DELETE", f"/api/kernels/{k['id']}", timeout=30)
            except Exception:
                pass

    def close(self) -> None:
        """Kernels, then the server, then anything left of either. Safe to call twice."""
        if self.proc is None:
            return
        self._remember_children()
        if self.proc.poll() is None:
            try:
                self.shutdown_kernels()
            except Exception:
                pass
            self.proc.send_signal(signal.SIGTERM)  # graceful: Lab shuts its kernels down too
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pid in self._known_pids:  # kernels run in their own sessions: kill any survivor by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc = None
        if self._log is not None:
            self._log.close()

    def alive_pids(self) -> list[int]:
        """Pids of the server and the processes it started that still run (empty after close())."""
        pids = set(self._known_pids) | ({self.proc.pid} if self.proc is not None else set())
        out = []
        for pid in sorted(pids):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            try:  # a zombie is gone for our purposes
                if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                    continue
            except OSError:
                pass
            out.append(pid)
        return out


# --------------------------------------------------------------------------------------------- page
_CURRENT = "window.jupyterapp.shell.currentWidget"
_KERNEL_STATUS = f"""() => {{ const w = {_CURRENT};
    const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return k ? k.status : null; }}"""
_RUN_STATE = f"""() => {{ const w = {_CURRENT};
    if (!w || !w.content || !w.content.model) return null;
    const cells = []; const m = w.content.model;
    for (let i = 0; i < m.cells.length; i++) {{
        const c = m.cells.get(i);
        if (c.type !== 'code') continue;
        cells.push({{count: c.executionCount, outputs: c.outputs.toJSON()}});
    }}
    const k = w.sessionContext.session && w.sessionContext.session.kernel;
    return {{status: k ? k.status : null, cells}}; }}"""


def _format_error(o: dict) -> str:
    tb = "\n".join(ANSI.sub("", line) for line in o.get("traceback", [])[-12:])
    return f"{o.get('ename')}: {o.get('evalue')}\n{tb}"


class LabPage:
    """A Playwright page on a ``LabServer``; console errors and page errors are recorded."""

    def __init__(self, page, server: LabServer):
        self.page, self.server = page, server
        self.console_errors: list[str] = []
        page.set_default_timeout(60_000)
        page.on("console", lambda m: self.console_errors.append(f"console.{m.type}: {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console_errors.append(f"page error: {e}"))

    def goto(self, path: str = "") -> None:
        self.page.goto(self.server.lab_url(path), wait_until="domcontentloaded")
        self.page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=90_000)

    def open_notebook(self, name: str) -> None:
        """Open ``name`` (relative to the server root) as the only tab, and wait for an idle kernel."""
        self.goto(f"/tree/{name}?reset")  # ?reset: no tabs restored from an earlier test
        self.wait_kernel_idle()

    def wait_kernel_idle(self, timeout: float = 120.0) -> None:
        self.page.wait_for_function(f"() => ({_KERNEL_STATUS})() === 'idle'", timeout=timeout * 1000)

    def kernel_status(self) -> str | None:
        return self.page.evaluate(_KERNEL_STATUS)

    def current_panel(self) -> dict:
        """What the main area shows: widget class names, the document path, the kernel name."""
        return self.page.evaluate(f"""() => {{ const w = {_CURRENT}; if (!w) return null;
            const s = w.sessionContext; const k = s && s.session && s.session.kernel;
            return {{classes: w.node.className, path: w.context ? w.context.path : null,
                     kernel: k ? k.name : null, status: k ? k.status : null}}; }}""")

    def kernel_execute(self, code: str) -> str:
        """Run ``code`` in the current panel's kernel (not in a cell); its stdout."""
        return self.page.evaluate("""async ([code]) => {
            const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
            const f = k.requestExecute({code}); let out = '';
            f.onIOPub = m => { if (m.header.msg_type === 'stream') out += m.content.text; };
            await f.done; return out; }""", [code])

    def watch_kernel(self) -> None:
        """From now on, record what the kernel reports as failing: error messages, and tracebacks
        on stderr (an exception in a widget callback is logged there, never shown in a cell)."""
        self.page.evaluate(f"""() => {{ const w = {_CURRENT};
            const k = w.sessionContext.session.kernel; window.__wbKernelErrors = [];
            if (window.__wbWatched === k) return; window.__wbWatched = k;
            k.iopubMessage.connect((_, msg) => {{
                const t = msg.header.msg_type, c = msg.content;
                if (t === 'error') window.__wbKernelErrors.push(c.ename + ': ' + c.evalue + '\\n' + (c.traceback || []).join('\\n'));
                else if (t === 'stream' && c.name === 'stderr' && /Traceback|Exception in/.test(c.text))
                    window.__wbKernelErrors.push(c.text);
            }}); }}""")

    def kernel_errors(self) -> list[str]:
        """What the kernel reported as failing since ``watch_kernel`` (or the last call); clears it."""
        errs = self.page.evaluate("() => { const e = window.__wbKernelErrors || []; window.__wbKernelErrors = []; "
                                  "return e; }")
        return [ANSI.sub("", e) for e in errs]

    def run_all(self, timeout: float = 240.0) -> None:
        """Run every cell (fired, not awaited: see the module docstring) and wait until the last
        code cell has run; raise ViewCheckError with the traceback when a cell fails."""
        self.page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        deadline = time.monotonic() + timeout
        while True:
            state = self.page.evaluate(_RUN_STATE)
            errors = [o for c in state["cells"] for o in c["outputs"] if o.get("output_type") == "error"]
            if errors:
                raise ViewCheckError("a cell failed in JupyterLab:\n" + "\n".join(_format_error(o) for o in errors))
            if state["cells"] and state["cells"][-1]["count"] is not None and state["status"] == "idle":
                return
            if time.monotonic() > deadline:
                done = sum(c["count"] is not None for c in state["cells"])
                raise ViewCheckError(f"run-all did not finish within {timeout:.0f} s ({done} of "
                                     f"{len(state['cells'])} code cells ran; kernel {state['status']})")
            time.sleep(0.25)


# ---------------------------------------------------------------------------------------- view spec
@dataclass(frozen=True)
class Interaction:
    """One user action on a control of the view, and the figures it must change.

    kind: "slider" (press ArrowRight ``steps`` times on the handle), "dropdown" (select option
    ``value``: an index, or a label string), "toggle" (click the button labelled ``value``),
    "text" (type ``value`` and press Enter) or "button" (click the button labelled ``value``).
    label: the control's description (its visible label); for "button" leave it None.
    figures: indices (in page order) of the view's plotly figures whose title or data must differ
    afterwards.
    """

    kind: str
    label: str | None = None
    value: object = None
    figures: tuple[int, ...] = (0,)
    steps: int = 1

    def describe(self) -> str:
        what = f"{self.kind} {self.label!r}" if self.label else self.kind
        return f"{what} -> {self.value!r}" if self.value is not None else what


@dataclass(frozen=True)
class ViewSpec:
    """One interactive view under test; see ``tests/test_browser.py`` for how to add one.

    name: test id and screenshot name. code: notebook cells (strings) that build the view; the
    last cell's output must be the view. n_figures: plotly figures the view shows; controls:
    ``{css class: minimum count}`` of ipywidgets controls (e.g. ``{"widget-dropdown": 2}``);
    interactions: replayed in order. needs: a callable returning a reason to skip (or None),
    for optional system data such as WordNet.
    """

    name: str
    code: tuple[str, ...]
    n_figures: int
    controls: dict = field(default_factory=dict)
    interactions: tuple[Interaction, ...] = ()
    needs: object = None


def write_view_notebook(spec: ViewSpec, folder: Path) -> Path:
    """``<folder>/<name>.ipynb`` holding the spec's cells (python3 kernel, no outputs)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in spec.code]
    path = Path(folder) / f"{spec.name}.ipynb"
    nbformat.write(nb, path)
    return path


# The view is the output of the notebook's last code cell.
_VIEW_JS = "(() => { const c = document.querySelectorAll('.jp-Notebook .jp-CodeCell'); " \
           "return c.length ? c[c.length - 1].querySelector('.jp-OutputArea') : null; })()"
_FIGURE_STATE = """() => { const out = """ + _VIEW_JS + """; if (!out) return [];
    return Array.from(out.querySelectorAll('.js-plotly-plot')).map(gd => {
    const t = gd.layout && gd.layout.title;
    const text = t === undefined ? '' : (typeof t === 'string' ? t : (t.text || ''));
    const data = (gd.data || []).map(d => ['x', 'y', 'z', 'text', 'name', 'marker'].map(k => {
        const v = d[k]; if (v === undefined || v === null) return null;
        if (ArrayBuffer.isView(v)) return Array.from(v);
        return v; }));
    let json; try { json = JSON.stringify(data); } catch (e) { json = String(e); }
    return {title: text, data: json, traces: (gd.data || []).length}; }); }"""
_LAYOUT = """() => {
    const out = """ + _VIEW_JS + """; if (!out) return null;
    const nb = out.closest('.jp-Notebook') || out;
    const limit = nb.getBoundingClientRect().right - 12;  // less the notebook's scrollbar
    const overlaps = (a, b) => a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
    const r = e => e ? e.getBoundingClientRect() : null;
    const figs = Array.from(out.querySelectorAll('.js-plotly-plot')).map((gd, i) => {
        const t = r(gd.querySelector('.gtitle')), m = r(gd.querySelector('.modebar'));
        const l = r(gd.querySelector('.legend')), svg = r(gd.querySelector('.main-svg'));
        const p = r(gd.querySelector('.draglayer .nsewdrag'));  // the plot area
        return {index: i, title: (gd.querySelector('.gtitle') || {}).textContent || '',
                width: svg ? svg.width : 0, right: svg ? svg.right : 0,
                title_vs_modebar: !!(t && m && m.width > 0 && t.width > 0 && overlaps(t, m)),
                legend_vs_modebar: !!(l && m && m.width > 0 && l.width > 0 && overlaps(l, m)),
                title_vs_legend: !!(t && l && l.width > 0 && t.width > 0 && overlaps(t, l)),
                title_vs_plot: !!(t && p && t.width > 0 && p.width > 0 && overlaps(t, p)),
                title_clipped: !!(t && svg && t.width > 0 && (t.right > svg.right + 1 || t.left < svg.left - 1))};
    });
    // What the user must see: figures and the visible parts of controls and HTML panels.
    const parts = out.querySelectorAll('.js-plotly-plot .main-svg, .widget-label, select, input, textarea, ' +
                                       'button, .slider-container, .widget-readout, .widget-html-content');
    let widest = 0, widest_what = '';
    for (const e of parts) {
        const b = e.getBoundingClientRect();
        if (b.width > 0 && b.right > widest) { widest = b.right; widest_what = e.className || e.tagName; }
    }
    return {limit, widest, widest_what, figures: figs}; }"""


def _controls(page, kind: str, label: str | None):
    """Locator of the ipywidgets control of ``kind`` described by ``label`` inside the view."""
    css = {"slider": ".widget-slider", "dropdown": ".widget-dropdown", "toggle": ".widget-toggle-buttons",
           "text": ".widget-text, .widget-textarea, .widget-combobox", "button": ".widget-button"}[kind]
    base = view_locator(page).locator(css)
    if label is not None:
        base = base.filter(has=page.locator(".widget-label", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")))
    return base


def _act(page, it: Interaction) -> None:
    ctrl = _controls(page, it.kind, it.label)
    if ctrl.count() == 0:
        raise ViewCheckError(f"no {it.kind} control labelled {it.label!r} in the view")
    ctrl = ctrl.first
    if it.kind == "slider":
        handle = ctrl.locator(".noUi-handle").first
        handle.focus()
        for _ in range(it.steps):
            page.keyboard.press("ArrowRight")
        handle.blur()  # continuous_update=False sliders commit on release/blur
    elif it.kind == "dropdown":
        select = ctrl.locator("select")
        if isinstance(it.value, int):
            select.select_option(index=it.value)
        else:
            select.select_option(label=str(it.value))
    elif it.kind == "toggle":
        ctrl.locator("button", has_text=str(it.value)).first.click()
    elif it.kind == "text":
        box = ctrl.locator("input, textarea").first
        box.fill(str(it.value))
        box.press("Enter")
        box.blur()
    elif it.kind == "button":
        view_locator(page).locator("button.widget-button", has_text=str(it.value)).first.click()
    else:
        raise ValueError(f"unknown interaction kind {it.kind!r}")


def view_locator(page):
    return page.locator(".jp-Notebook .jp-CodeCell").last.locator(".jp-OutputArea")


def figure_states(page) -> list[dict]:
    """Per plotly figure of the view: its title text and a JSON dump of its traces' data."""
    return page.evaluate(_FIGURE_STATE)


def layout_report(page) -> dict:
    return page.evaluate(_LAYOUT)


def _tall_screenshot(page, view, path: Path) -> None:
    """The whole view in one picture: the window grows taller (never wider) until the view fits,
    since an element screenshot of something taller than the window is cut by Lab's panels."""
    h = view.bounding_box()["height"] if view.count() else 0
    page.set_viewport_size({"width": VIEWPORT["width"], "height": int(min(6000, max(VIEWPORT["height"], h + 300)))})
    page.wait_for_timeout(300)
    view.scroll_into_view_if_needed()
    view.screenshot(path=str(path))


def _check_layout(spec: ViewSpec, layout: dict, when: str) -> None:
    """Raise when a figure title hides under plotly's toolbar or legend, is clipped, or the view is wider
    than the notebook (``layout``: what ``layout_report`` measured; ``when``: for the message)."""
    problems = ("title_vs_modebar", "title_vs_legend", "title_vs_plot", "legend_vs_modebar", "title_clipped")
    bad = [f"figure {f['index']} ({f['title']!r}): " + ", ".join(k.replace("_vs_", " under ").replace("_", " ")
                                                                  for k in problems if f[k])
           for f in layout["figures"] if any(f[k] for k in problems)]
    if bad:
        raise ViewCheckError(f"{spec.name}: figure parts overlap at a {VIEWPORT['width']} px window{when}: "
                             + "; ".join(bad))
    if layout["widest"] > layout["limit"] + 1:
        raise ViewCheckError(f"{spec.name}: the view runs {layout['widest'] - layout['limit']:.0f} px past the "
                             f"notebook's right edge at a {VIEWPORT['width']} px window{when} "
                             f"({layout['widest_what']!r}): figures or controls are cut off")


def check_view(lab: LabPage, spec: ViewSpec, shots: Path, update_timeout: float = 60.0) -> dict:
    """Check the view of the open, fully run notebook against ``spec``; screenshots to ``shots``.

    Raises ViewCheckError when: the view shows "Error displaying widget", fewer plotly SVG
    figures or controls than the spec, an interaction leaves a listed figure unchanged (title and
    data), a figure title hides under plotly's toolbar or legend, the view is wider than the
    notebook, or the browser logged an error. Returns what was measured (for the report).
    """
    page, server = lab.page, lab.server
    shots.mkdir(parents=True, exist_ok=True)
    view = view_locator(page)
    deadline = time.monotonic() + update_timeout
    while True:  # the widget manager renders the view asynchronously after the cell finished
        text = view.inner_text(timeout=10_000) if view.count() else ""
        if "Error displaying widget" in text or "Error rendering" in text:
            raise ViewCheckError(f"{spec.name}: JupyterLab could not display the view: "
                                 f"{text.strip()[:400]!r}; console: {lab.console_errors[:5]}")
        n_svg = view.locator(".js-plotly-plot .main-svg").count()
        figs = figure_states(page)
        empty = [i for i, f in enumerate(figs) if f["traces"] == 0]
        if len(figs) >= spec.n_figures and n_svg >= spec.n_figures and not empty:
            break
        if lab.console_errors:  # e.g. a widget's front end threw: it will not render
            raise ViewCheckError(f"{spec.name}: the browser logged errors while the view rendered: "
                                 f"{lab.console_errors[:5]}")
        if time.monotonic() > deadline and empty:
            raise ViewCheckError(f"{spec.name}: figure(s) {empty} drew empty (no traces): their front end never got "
                                 "their data (an anywidget model that failed to initialize does this)")
        if time.monotonic() > deadline:
            raise ViewCheckError(f"{spec.name}: {len(figs)} plotly figure(s) ({n_svg} SVG layers) rendered, "
                                 f"expected {spec.n_figures}; view text {text.strip()[:300]!r}; "
                                 f"console: {lab.console_errors[:5]}")
        time.sleep(0.25)
    lab.watch_kernel()
    for css, n in spec.controls.items():
        got = view.locator(f".{css}").count()
        if got < n:
            raise ViewCheckError(f"{spec.name}: {got} control(s) .{css} in the view, expected at least {n}")
    page.wait_for_timeout(300)  # let plotly finish its first layout pass before measuring
    layout = layout_report(page)
    view.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / f"{spec.name}-page.png"))  # the window as a user sees it
    _check_layout(spec, layout, "")
    _tall_screenshot(page, view, shots / f"{spec.name}.png")
    for i, it in enumerate(spec.interactions):
        before = figure_states(page)
        log_at = server.log_size()
        _act(page, it)
        deadline = time.monotonic() + update_timeout
        while True:
            errors = lab.kernel_errors()
            if errors:
                raise ViewCheckError(f"{spec.name}: the kernel raised after {it.describe()}:\n" + "\n".join(errors)[-3000:])
            after = figure_states(page)
            unchanged = [f for f in it.figures if f < len(after) and f < len(before) and after[f] == before[f]]
            missing = [f for f in it.figures if f >= len(after)]
            if not unchanged and not missing:
                break
            if time.monotonic() > deadline:
                raise ViewCheckError(
                    f"{spec.name}: after {it.describe()}, figure(s) {unchanged + missing} did not change within "
                    f"{update_timeout:.0f} s (title {[after[f]['title'] for f in unchanged]!r}); server log:\n"
                    f"{server.log_since(log_at)[-2000:] or '(nothing)'}")
            time.sleep(0.25)
        page.wait_for_timeout(300)
        _tall_screenshot(page, view, shots / f"{spec.name}-{i + 1}.png")
        _check_layout(spec, layout_report(page), f" after {it.describe()}")  # new titles and panels must fit too
    errors = lab.kernel_errors()
    if errors:
        raise ViewCheckError(f"{spec.name}: the kernel raised:\n" + "\n".join(errors)[-3000:])
    if lab.console_errors:
        raise ViewCheckError(f"{spec.name}: the browser console logged errors: {lab.console_errors[:5]}")
    return {"layout": layout, "titles": [f["title"] for f in figure_states(page)]}
