"""JupyterLab as a person uses it: ``make lab``'s command, a real (headless) Chromium, the notebook run from the menu.

The browser is Debian's ``chromium``, installed by a session fixture with ``apt-get`` when ``/usr/bin/chromium`` is
missing (skipped, with the reason, only where it cannot be installed). It is driven through the Chrome DevTools
protocol (``websocket-client``, already a dependency of ``jupyter_server``): open the Lab URL with its token, open a
copy of ``notebooks/temporal_scaling_law.ipynb`` prepared at ``smoke`` (``papermill --prepare-only -p scale smoke``),
click Run > Run All Cells, wait, save with Ctrl+S, and check that a figure rendered in the page and that no cell
shows an error (in the page and in the saved file). A screenshot is saved in the test's temporary folder.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from harness import REPO, REPRESENTATIVE, Sandbox, kill_pids

CHROMIUM = "/usr/bin/chromium"
NOTEBOOK = REPRESENTATIVE


def _make_lab_command() -> list[str]:
    out = subprocess.run(["make", "-n", "-s", "lab"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [l for l in out.stdout.splitlines() if "jupyter lab" in l]
    assert len(lines) == 1, out.stdout
    return shlex.split(lines[0])


def test_make_lab_serves_on_localhost_with_a_token():
    cmd = _make_lab_command()
    assert cmd[0].endswith("/jupyter") and cmd[1] == "lab"
    joined = " ".join(cmd)
    assert re.search(r"--ip[ =]127\.0\.0\.1\b", joined), joined
    assert not re.search(r"token[= ]+(''|\"\")|--no-token|disable_check_xsrf", joined), joined  # token left on
    assert ("--allow-root" in cmd) == (os.geteuid() == 0), joined


@pytest.fixture(scope="session")
def chromium():
    if not Path(CHROMIUM).exists():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
            if r.returncode != 0:
                pytest.skip(f"chromium could not be installed: `{' '.join(cmd)}` failed: "
                            f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return CHROMIUM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    try:
        family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    kill_pids(family)
    proc.wait(timeout=10)


class DevTools:
    """A minimal Chrome DevTools protocol client over one page's websocket."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_js(self, expression: str, timeout: float, what: str, interval: float = 0.5):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def click(self, css: str, text: str, timeout: float = 30) -> None:
        """A real mouse click (press and release) at the centre of the element matching ``css`` with ``text``."""
        find = (f"(() => {{ const e = [...document.querySelectorAll({json.dumps(css)})]"
                f".find(e => e.textContent.trim() === {json.dumps(text)} && e.getBoundingClientRect().width > 0);"
                f" if (!e) return null; const r = e.getBoundingClientRect();"
                f" return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        x, y = self.wait_js(find, timeout, f"{text!r} ({css})")
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def key(self, key: str, code: str, vk: int, modifiers: int = 0) -> None:
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=code, windowsVirtualKeyCode=vk,
                      modifiers=modifiers)

    def shot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self):
        self.ws.close()


CELL_STATE = """(() => {
  const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  const prompts = cells.map(c => (c.querySelector('.jp-InputArea-prompt') || {}).textContent || '');
  return {n: cells.length, done: prompts.filter(p => /\\[\\d+\\]/.test(p)).length,
          busy: prompts.filter(p => p.includes('*')).length};
})()"""

PAGE_CHECK = """(() => {
  const imgs = [...document.querySelectorAll('.jp-OutputArea-output img')];
  const errors = [...document.querySelectorAll('.jp-OutputArea-output')]
      .map(o => o.textContent)
      .filter(t => /Traceback \\(most recent call last\\)|^\\s*\\w+(Error|Exception)\\b/m.test(t));
  return {images: imgs.length, rendered: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
          errors: errors.map(t => t.slice(0, 300))};
})()"""


def test_notebook_runs_in_jupyterlab_in_a_real_browser(chromium, tmp_path):
    box = Sandbox(tmp_path / "box")
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    nb = lab_dir / f"{NOTEBOOK}.ipynb"
    prep = subprocess.run([sys.executable, "-m", "papermill", "--prepare-only", "-p", "scale", "smoke",
                           str(REPO / "notebooks" / f"{NOTEBOOK}.ipynb"), str(nb)], env=box.env, capture_output=True,
                          text=True, timeout=120)
    assert prep.returncode == 0, prep.stderr
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))  # every cell in DOM
    news = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))

    port, token = _free_port(), secrets.token_hex(16)
    env = {**box.env, "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces")}
    env.pop("REPLICATE_PROGRESS", None)  # as a person's Lab: progress bars on,
    env.pop("MPLBACKEND", None)  # and matplotlib's inline backend (the test-wide Agg would hide every figure)
    cmd = _make_lab_command()
    cmd[0] = str((REPO / cmd[0]).resolve()) if not os.path.isabs(cmd[0]) else cmd[0]
    cmd += [f"--port={port}", f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False"]
    lab_log = tmp_path / "lab.log"
    lab = subprocess.Popen(cmd, cwd=lab_dir, env=env, stdout=open(lab_log, "wb"), stderr=subprocess.STDOUT,
                           start_new_session=True)
    browser = page = None
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                assert lab.poll() is None and time.time() < deadline, lab_log.read_text()[-3000:]
                time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError):  # the token is required
            urllib.request.urlopen(f"{base}/api/contents", timeout=5)

        profile = tmp_path / "chromium-profile"
        browser = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        devtools_port = None
        deadline = time.time() + 60
        while devtools_port is None and time.time() < deadline:
            line = browser.stderr.readline()
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                devtools_port = int(m.group(1))
            assert line or browser.poll() is None, "chromium exited"
        assert devtools_port, "chromium did not open its DevTools port"
        pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{devtools_port}/json/list", timeout=10).read())
        page = DevTools(next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"])
        page.call("Page.enable")
        page.call("Page.navigate", url=f"{base}/lab/tree/{nb.name}?token={token}")

        page.wait_js("document.querySelectorAll('.jp-Notebook .jp-CodeCell').length > 0", 120, "the notebook")
        deadline = time.time() + 180  # the kernel Lab starts for the notebook, idle (asked from the server's API)
        while not any(x["path"].endswith(nb.name) and x["kernel"]["execution_state"] == "idle" for x in json.loads(
                urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=10).read())):
            assert time.time() < deadline, "the notebook's kernel did not start"
            time.sleep(0.5)
        page.wait_js("(() => { const e = document.querySelector('.jp-Notebook-ExecutionIndicator');"
                     " return e !== null && e.closest('.jp-NotebookPanel') !== null; })()", 60, "the kernel indicator")
        time.sleep(1.0)  # let the page take in the kernel's status
        page.click(".lm-MenuBar-itemLabel", "Run")
        page.shot(tmp_path / "menu.png")
        page.click(".lm-Menu-itemLabel", "Run All Cells")
        page.wait_js(f"(() => {{ const s = {CELL_STATE}; return s.busy > 0 || s.done > 0; }})()", 60,
                     "the cells to start")
        t0 = time.time()
        state = page.wait_js(f"(() => {{ const s = {CELL_STATE}; const e = document.querySelector("
                             f"'.jp-Notebook-ExecutionIndicator'); return s.busy === 0 && s.done === s.n && e &&"
                             f" e.getAttribute('data-status') === 'idle' ? s : null; }})()", 900, "all cells to run",
                             interval=2)
        run_s = time.time() - t0
        page.shot(tmp_path / "jupyterlab.png")
        check = page.js(PAGE_CHECK)
        mtime = nb.stat().st_mtime
        page.key("s", "KeyS", 83, modifiers=2)  # Ctrl+S, as a person saves
        deadline = time.time() + 30
        while nb.stat().st_mtime == mtime and time.time() < deadline:
            time.sleep(0.2)
        page.close()
        print(f"{state['n']} code cells ran in {run_s:.0f} s; {check['rendered']} figures rendered; "
              f"screenshot {tmp_path / 'jupyterlab.png'}")

        assert check["rendered"] >= 1, f"no figure rendered in the page ({check})"
        assert not check["errors"], check["errors"]
        saved = json.loads(nb.read_text())
        outputs = [o for c in saved["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
        assert nb.stat().st_mtime != mtime, "Ctrl+S did not save the notebook"
        assert not [o for o in outputs if o["output_type"] == "error"], "a cell shows an error in the saved notebook"
        assert any("image/png" in o.get("data", {}) for o in outputs), "no figure in the saved notebook"
        assert (box.results / NOTEBOOK / "smoke" / "claims.csv").exists(), "the notebook did not publish its results"
    except BaseException:
        if page is not None:  # what the page looked like when it failed
            print(f"failure screenshot: {page.shot(tmp_path / 'failure.png')}")
        raise
    finally:
        if browser is not None:
            _stop(browser)
        _stop(lab)
