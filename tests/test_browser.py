"""The S-CFG accordion in a real browser: headless Chromium (Debian's ``chromium``) driven by playwright.

The page is a gradio 3.41.2 ``Blocks`` with our script's UI built by the stand-in ``ScriptRunner`` (our ``ui()``:
the stand-in ``InputAccordion`` + ``controls.build``), and the page head gets what the WebUI injects
(``modules/ui_gradio_extensions.py``: ``<script src="file=...">`` for ``script.js`` then every ``javascript/*.js``,
``<link rel="stylesheet">`` for each ``style.css`` before ``</body>``): the WebUI's ``script.js`` callbacks and
``inputAccordion.js`` (behavioural stand-ins in ``tests/browser_fixtures/``), our ``javascript/scfg_hints.js``
and ``style.css``.

Offline: gradio analytics off; every request that is not to the local server is aborted (gradio's page links
Google Fonts and a CDN script) and Chromium runs without background networking.
Skipped only when Chromium or playwright is missing:
``apt-get install -y chromium`` and ``pip install playwright==1.65.2`` (never ``playwright install``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from webui_harness import ROOT, load_webui, our_script

from scfg_ext.settings import FIELDS

FIXTURES = Path(__file__).resolve().parent / "browser_fixtures"
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PREFIX = "script_txt2img_scfg_scfg_"  # Script.elem_id: script_<tab>_<title "S-CFG" -> "scfg">_<our suffix>
ACCORDION = f"#{PREFIX}enabled"

if CHROMIUM is None:
    pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install playwright==1.65.2)")


def webpath(path: Path) -> str:
    """``modules/ui_gradio_extensions.py`` ``webpath``: gradio's ``file=`` route, mtime as cache buster."""
    return f"file={path}?{os.path.getmtime(path)}"


def head_and_body():
    """What ``javascript_html()`` / ``css_html()`` add before ``</head>`` / ``</body>``, in the WebUI's order:
    ``script.js``, the WebUI's own ``javascript/*.js``, then each extension's; style sheets likewise."""
    scripts = [FIXTURES / "script.js", FIXTURES / "inputAccordion.js", *sorted((ROOT / "javascript").glob("*.js"))]
    js = "".join(f'<script type="text/javascript" src="{webpath(p)}"></script>\n' for p in scripts)
    css = f'<link rel="stylesheet" property="stylesheet" href="{webpath(ROOT / "style.css")}">'
    return js, css


@pytest.fixture(scope="module")
def server():
    """The page, served by gradio on 127.0.0.1 (a free port from 7860 up)."""
    saved_env = {k: os.environ.get(k) for k in ("GRADIO_ANALYTICS_ENABLED", "NO_PROXY", "no_proxy")}
    os.environ.update(GRADIO_ANALYTICS_ENABLED="False", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    import gradio as gr

    webui = load_webui()
    webui.script_callbacks.before_ui_callback()
    runner = webui.scripts.scripts_txt2img
    runner.initialize_scripts(False)
    seen = []

    def record(value):
        seen.append(value)
        return "on" if value else "off"

    # modules/shared_gradio_themes.py: the WebUI's default theme names its fonts as plain strings (no Google Fonts)
    theme = gr.themes.Default(font=["Source Sans Pro", "ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["IBM Plex Mono", "ui-monospace", "Consolas", "monospace"])
    with gr.Blocks(analytics_enabled=False, title="S-CFG browser test", theme=theme) as demo:
        gr.Textbox(label="Prompt", elem_id="txt2img_prompt")  # script.js runs onUiLoaded once this exists
        runner.setup_ui()
        state = gr.Textbox(label="S-CFG checkbox value seen by the server", elem_id="scfg_test_state")
        script = our_script(runner)
        script.controls[0].change(record, inputs=[script.controls[0]], outputs=[state])

    js, css = head_and_body()
    original = gr.routes.templates.TemplateResponse

    def template_response(*args, **kwargs):  # modules/ui_gradio_extensions.py reload_javascript()
        res = original(*args, **kwargs)
        res.body = res.body.replace(b"</head>", f"{js}</head>".encode())
        res.body = res.body.replace(b"</body>", f"{css}</body>".encode())
        res.init_headers()
        return res

    gr.routes.templates.TemplateResponse = template_response
    try:
        try:
            demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, show_api=False, share=False,
                        allowed_paths=[str(FIXTURES), str(ROOT / "javascript"), str(ROOT / "style.css")])
        except Exception as e:  # noqa: BLE001 - say why in one line
            import starlette

            pytest.fail(f"gradio {gr.__version__} could not serve its page with starlette {starlette.__version__} "
                        f"({type(e).__name__}: {e}); the WebUI's stack is fastapi==0.94.0 (starlette 0.26): "
                        "see requirements-test.txt")
        yield demo.local_url, seen, script
    finally:
        demo.close()
        gr.routes.templates.TemplateResponse = original
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def page(server):
    url, _, _ = server
    host = urlparse(url).hostname
    blocked, problems = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        context.route("**/*", lambda route: route.continue_() if urlparse(route.request.url).hostname == host
                      else (blocked.append(route.request.url), route.abort()))
        page = context.new_page()
        page.on("pageerror", lambda e: problems.append((f"pageerror: {e}", None)))
        page.on("console", lambda m: problems.append((m.text, m.location.get("url"))) if m.type == "error" else None)
        page.goto(url)
        page.wait_for_selector(f"#{PREFIX}enabled-visible-checkbox", state="attached", timeout=30000)
        page.problems, page.blocked = problems, blocked
        yield page
        browser.close()


def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def is_open(page) -> bool:
    return "open" in (page.get_attribute(f"{ACCORDION} .label-wrap", "class") or "")


def test_accordion_opens_and_enables(page, server):
    _, seen, _ = server
    visible_box = page.locator(f"{ACCORDION}-visible-checkbox")
    assert not is_open(page) and not visible_box.is_checked()
    assert not page.locator(f"#{PREFIX}min_rate").is_visible()
    assert seen == []

    page.click(f"{ACCORDION} .label-wrap", position={"x": 200, "y": 10})  # the header, not the box
    assert wait_for(lambda: is_open(page))
    page.wait_for_selector(f"#{PREFIX}min_rate", state="visible")
    assert wait_for(visible_box.is_checked)  # linked: opening turns S-CFG on (inputAccordion.js)
    assert wait_for(lambda: seen[-1:] == [True]), seen  # the hidden gradio checkbox's value reached the server
    assert wait_for(lambda: page.input_value("#scfg_test_state textarea") == "on")  # and the reply the page

    visible_box.click()  # the box alone: S-CFG off, the accordion stays open
    assert wait_for(lambda: seen[-1:] == [False]), seen
    assert not visible_box.is_checked() and is_open(page)
    assert wait_for(lambda: page.input_value("#scfg_test_state textarea") == "off")

    visible_box.click()
    assert wait_for(lambda: seen[-1:] == [True]), seen
    assert visible_box.is_checked() and is_open(page)


def title_on_hover(page, selector):
    """The tooltip the browser shows over an element: the title of it or of its nearest ancestor with one."""
    return page.locator(selector).first.evaluate("e => { const t = e.closest('[title]'); return t && t.title; }")


def test_hints_are_titles(page):
    # scfg_hints.js runs onAfterUiUpdate: 200 ms after the page's last DOM change
    assert wait_for(lambda: page.get_attribute(f"{ACCORDION}-visible-checkbox", "title") == FIELDS[0].hint)
    for f in FIELDS[1:]:
        block = f"#{PREFIX}{f.name}"
        assert page.get_attribute(block, "title") == f.hint, f.name
        labels = [x for x in page.locator(f"{block} label span").all() if x.inner_text().strip()]
        assert labels, f.name
        for label in labels:
            assert label.get_attribute("title") == f.hint, (f.name, label.inner_text())
        assert title_on_hover(page, f"{block} input, {block} textarea") == f.hint, f.name
    # the accordion: its header (label and the checkbox inputAccordion.js puts there), not its whole body
    enabled = FIELDS[0].hint
    assert page.get_attribute(f"{ACCORDION} > .label-wrap", "title") == enabled
    assert title_on_hover(page, f"{ACCORDION} > .label-wrap span") == enabled
    assert page.get_attribute(f"{ACCORDION}-visible-checkbox", "title") == enabled
    assert page.get_attribute(ACCORDION, "title") in (None, "")
    assert title_on_hover(page, f"{ACCORDION} .scfg-row") is None


def test_compact_rows_and_screenshot(page):
    if not is_open(page):
        page.click(f"{ACCORDION} .label-wrap", position={"x": 200, "y": 10})
        assert wait_for(lambda: is_open(page))
    page.wait_for_selector(f"#{PREFIX}hires", state="visible")
    boxes = {f.name: page.locator(f"#{PREFIX}{f.name}").bounding_box() for f in FIELDS[1:]}
    from scfg_ext.webui.controls import LAYOUT

    tops = [{round(boxes[name]["y"]) for name in row} for row in LAYOUT]
    for row, top in zip(LAYOUT, tops, strict=True):
        assert max(top) - min(top) <= 12, (row, top)  # each row's controls side by side
    assert min(tops[1]) > max(tops[0]) and min(tops[2]) > max(tops[1])
    # style.css is ours only: the prompt box outside the accordion keeps gradio's layout
    assert page.locator("#txt2img_prompt").evaluate("e => e.classList.contains('scfg-control')") is False
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)
    page.locator(ACCORDION).screenshot(path=str(ARTIFACTS / "scfg_accordion.png"))
    assert (ARTIFACTS / "scfg_accordion.png").stat().st_size > 1000
    # a narrow column (a phone, or a split screen): the rows wrap instead of overflowing
    page.set_viewport_size({"width": 420, "height": 1400})
    page.wait_for_timeout(300)
    overflow = page.locator(ACCORDION).evaluate("e => e.scrollWidth - e.clientWidth")
    page.locator(ACCORDION).screenshot(path=str(ARTIFACTS / "scfg_accordion_narrow.png"))
    page.set_viewport_size({"width": 1100, "height": 900})
    assert overflow <= 1


def test_no_script_errors_and_offline(page):
    # gradio's index.html loads iframeResizer from a CDN: aborted here, and the only error on the page
    assert all(urlparse(u).hostname == "cdnjs.cloudflare.com" for u in page.blocked), page.blocked
    assert [text for text, url in page.problems if url not in page.blocked] == []
