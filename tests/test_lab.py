"""The README's way to run a chapter: JupyterLab starts and serves a chapter's .md as a notebook.

Starts ``jupyter lab`` as ``make lab`` does (headless: no browser; a random port and token), asks
its contents API for the chapter, and stops it. Fails when JupyterLab or Jupytext's contents
manager is missing from the environment (``make install`` installs both, extra ``lab``).
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "01_conditional_covariance.md"
#: Settings that make JupyterLab open MyST/Markdown files with Jupytext's notebook view (make lab).
SETTINGS = ROOT / ".jupyter" / "lab" / "settings"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str):
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
        kind = response.headers.get("Content-Type", "")
        return json.loads(body) if "json" in kind else body.decode()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    jupyter = shutil.which("jupyter", path=str(Path(sys.executable).parent))
    assert jupyter, f"no jupyter beside {sys.executable}"
    home = tmp_path_factory.mktemp("jupyter")
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "run"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "ws"))
    port, token = _free_port(), secrets.token_hex(16)
    command = [jupyter, "lab", f"notebooks/{CHAPTER}", "--no-browser", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--LabApp.app_settings_dir={SETTINGS}"]
    if os.geteuid() == 0:  # as make lab does (CI runs as root)
        command.append("--allow-root")
    log = (home / "lab.log").open("w")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"jupyter lab exited: {(home / 'lab.log').read_text()[-2000:]}"
            try:
                _get(f"{url}/api/status", token)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "jupyter lab did not answer within 120 s"
                time.sleep(0.5)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_lab_lists_the_chapter_as_a_notebook(lab):
    url, token = lab
    listing = _get(f"{url}/api/contents?content=1", token)  # the root is the chapter's folder
    kinds = {entry["name"]: entry["type"] for entry in listing["content"]}
    assert kinds.get(CHAPTER) == "notebook", f"{CHAPTER} listed as {kinds.get(CHAPTER)!r}: {kinds}"


def test_lab_opens_the_chapter_with_the_cells_of_its_source(lab):
    import jupytext

    url, token = lab
    model = _get(f"{url}/api/contents/{CHAPTER}?content=1", token)
    assert model["type"] == "notebook"
    expected = jupytext.read(ROOT / "notebooks" / CHAPTER)
    cells = model["content"]["cells"]
    assert [c["cell_type"] for c in cells] == [c.cell_type for c in expected.cells]
    code = [c["source"] for c in cells if c["cell_type"] == "code"]
    assert code and code == [c.source for c in expected.cells if c.cell_type == "code"]


def test_lab_opens_markdown_notebooks_as_notebooks_by_default(lab):
    url, token = lab
    assert "JupyterLab" in _get(f"{url}/lab", token)
    settings = _get(f"{url}/lab/api/settings/@jupyterlab/docmanager-extension:plugin", token)
    viewers = settings["schema"]["properties"]["defaultViewers"]["default"]
    assert viewers.get("markdown") == "Jupytext Notebook" and viewers.get("myst") == "Jupytext Notebook"
