"""The built book in a real browser: MathJax rendered from the book itself, every image resolved.

Needs ``_build/html`` (``make book``) and Debian's ``chromium`` and ``chromium-driver``. Outside CI
the test is skipped when either is missing; under ``CI=true`` a missing piece is a failure.
Screenshots of the checked pages are written to ``_build/screenshots/``.
"""

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
#: Pages that must contain rendered math.
MATH_PAGES = ["index.html", "book/notation.html", "notebooks/01_conditional_covariance.html"]
#: TeX left in the text outside code blocks means MathJax did not render it.
RAW_TEX = re.compile(r"\$\$|\\\(|\\\[|\\begin\{|\\[A-Za-z]{2,}")

missing = [what for what, ok in [("_build/html (run make book)", (HTML / "index.html").is_file()),
                                 ("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)] if not ok]
if missing and os.environ.get("CI") != "true":
    pytestmark = pytest.mark.skip(reason=f"missing: {', '.join(missing)}")

PAGES = sorted(str(p.relative_to(HTML)) for p in HTML.glob("**/*.html")
               if not any(part.startswith(("_", ".")) for part in p.relative_to(HTML).parts)
               and p.name not in ("genindex.html", "search.html"))

VISIBLE_TEXT_JS = """
const body = document.querySelector('main') || document.body;
const copy = body.cloneNode(true);
copy.querySelectorAll('pre, code, script, style, mjx-container').forEach(e => e.remove());
return copy.innerText;
"""
MATHJAX_DONE_JS = """
const done = arguments[arguments.length - 1];
const local = Array.from(document.scripts).some(s => s.src.includes('/_static/mathjax/'));
if (!Array.from(document.scripts).some(s => s.src.toLowerCase().includes('mathjax'))) { done('no math'); return; }
if (!local) { done('MathJax is not served from the book'); return; }
if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) { done('MathJax not loaded'); return; }
MathJax.startup.promise.then(() => done('ok')).catch(e => done('MathJax failed: ' + e));
"""
IMAGES_JS = "return Array.from(document.images).map(i => [i.src, i.complete && i.naturalWidth > 0]);"


@pytest.fixture(scope="module")
def server():
    """Serve _build/html on localhost (file:// URLs would block MathJax's fonts)."""
    assert not missing, f"missing: {', '.join(missing)}"
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(HTML)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1400", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def test_pages_were_built():
    assert set(MATH_PAGES) <= set(PAGES), f"built pages: {PAGES}"


@pytest.mark.browser
@pytest.mark.parametrize("page", PAGES)
def test_page_renders(page, server, browser):
    browser.get(f"{server}/{page}")
    status = browser.execute_async_script(MATHJAX_DONE_JS)
    assert status == "ok" or (status == "no math" and page not in MATH_PAGES), f"{page}: {status}"
    text = browser.execute_script(VISIBLE_TEXT_JS)
    leftover = sorted(set(RAW_TEX.findall(text)))
    assert not leftover, f"raw TeX left in {page}: {leftover}"
    if page in MATH_PAGES:
        n_math = browser.execute_script("return document.querySelectorAll('mjx-container').length;")
        assert n_math > 0, f"no rendered math on {page}"
    broken = [src for src, ok in browser.execute_script(IMAGES_JS) if not ok]
    assert not broken, f"images that did not load on {page}: {broken}"
    if page in MATH_PAGES:
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SHOTS / (page.replace("/", "_").removesuffix(".html") + ".png")))
