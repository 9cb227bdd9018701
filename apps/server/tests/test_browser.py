"""The chat page in headless Chromium: type a message, watch the reply stream in, stop one mid-way.

Chromium is Debian's ``chromium`` package at ``/usr/bin/chromium`` (``tools/test.sh`` installs it
when it can); playwright only drives it, and no browser is downloaded. The server runs on
127.0.0.1 with a real scheduler over a tiny random model whose forward pass sleeps a little, so a
reply takes long enough to press Stop while it streams.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed at /usr/bin/chromium; apt-get install chromium",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency: pip install playwright")

from astrai_core import load_checkpoint  # noqa: E402
from astrai_infer import Scheduler  # noqa: E402
from astrai_server import create_app  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
STEP_SECONDS = 0.01


@pytest.fixture(scope="module")
def page_url(tiny_checkpoint):
    path, _ = tiny_checkpoint
    checkpoint = load_checkpoint(path)
    model = checkpoint.model
    forward = model.forward

    def slow_forward(*args, **kwargs):
        time.sleep(STEP_SECONDS)
        return forward(*args, **kwargs)

    model.forward = slow_forward
    scheduler = Scheduler(model, checkpoint.tokenizer, fast=False)
    app = create_app({"SCHEDULER": scheduler, "ASTRAI_CHECKPOINT": str(path)})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    thread.join(5)
    scheduler.shutdown()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def send(browser, page_url, text: str, temperature: str, max_tokens: str):
    """Open the chat page, set the controls and send ``text`` with the Enter key."""
    page = browser.new_page()
    page.goto(page_url)
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    return page


def test_a_reply_streams_in_and_joins_the_conversation(browser, page_url):
    page = send(browser, page_url, "你好，世界！Hello", temperature="0.8", max_tokens="12")
    page.wait_for_function("!document.querySelector('#send').disabled && "
                           "!document.querySelector('.message.assistant.pending')", timeout=30000)
    assert page.locator(".message.user .content").first.text_content() == "你好，世界！Hello"
    replies = page.locator(".message.assistant .content")
    assert replies.count() == 1
    assert replies.first.text_content()

    page.fill("#prompt", "second")
    page.press("#prompt", "Enter")
    page.wait_for_function("document.querySelectorAll('.message.assistant').length === 2 && "
                           "!document.querySelector('#send').disabled", timeout=30000)
    assert page.locator(".message.user").count() == 2
    page.close()


def test_stop_ends_a_reply_mid_way(browser, page_url):
    page = send(browser, page_url, "Tell me a long story", temperature="1", max_tokens="200")
    page.wait_for_function("(document.querySelector('.message.assistant .content') || {}).textContent", timeout=30000)
    page.click("#stop")
    page.wait_for_function("document.querySelector('#status').textContent === 'Stopped.'", timeout=10000)
    assert not page.locator("#send").is_disabled()
    stopped = page.locator(".message.assistant .content").first.text_content()
    time.sleep(0.2)
    assert page.locator(".message.assistant .content").first.text_content() == stopped
    page.close()


def test_page_shows_exactly_the_api_reply(browser, page_url):
    import json
    import urllib.request

    prompt = "请用中文回答：什么是 Debian？"
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": 12, "temperature": 0})
    request = urllib.request.Request(
        page_url + "v1/chat/completions", data=body.encode("utf-8"), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        expected = json.loads(response.read().decode("utf-8"))["choices"][0]["message"]["content"]

    page = send(browser, page_url, prompt, temperature="0", max_tokens="12")
    page.wait_for_function("!document.querySelector('#send').disabled && "
                           "!document.querySelector('.message.assistant.pending')", timeout=30000)
    # Greedy decoding: the streamed, rendered reply must be the API's text, character for character.
    assert page.locator(".message.assistant .content").first.text_content() == expected
    page.close()
