"""The web app in a real browser: Debian's headless Chromium driven by Playwright (no browser download)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from .conftest import TINY_CLIP_CFG, random_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.browser


def _needs(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        pytest.skip(f'{module} is not installed (pip install -e ".[app]")')


@pytest.fixture()
def app_url(tmp_path, tiny_clip_file, tiny_heads_file):
    """tools/app.py with the tiny model, serving on a free port of 127.0.0.1."""
    _needs("gradio")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CLIP_CFG))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "app.py"), f"port={port}", "device=cpu",
                             f"model.clip.name={tmp_path / 'tiny.json'}", f"model.clip.pretrained={tiny_clip_file[1]}",
                             f"model.checkpoint={tiny_heads_file}", "model.proj_dim=16",
                             "slide.scale=[512,128]", "slide.crop=[64,64]", "slide.stride=[32,32]"],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("the app did not start:\n" + (tmp_path / "app.log").read_text()[-3000:])
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_app_segments_uploads_in_a_real_browser(app_url, tmp_path):
    _needs("playwright")
    if not os.path.isfile(CHROMIUM):
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    h, w = 96, 128
    Image.fromarray(random_image(h, w, seed=7)).save(tmp_path / "photo.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(app_url)
        page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "photo.png"))
        prompts = page.locator("#prompts textarea")

        def segment(text: str | None, click=None) -> tuple[bytes, tuple[int, int]]:
            before = page.locator("#result img").get_attribute("src") if page.locator("#result img").count() else None
            if click is None:
                prompts.fill(text)
                page.locator("#segment").click()
            else:
                page.locator("#input-image img").click(position=click)
            result = page.locator("#result img")
            expect(result).to_have_count(1, timeout=120_000)
            page.wait_for_function("([sel, old]) => { const i = document.querySelector(sel);"
                                   " return i && i.complete && i.naturalWidth > 0 && i.src !== old; }",
                                   arg=["#result img", before], timeout=120_000)
            size = result.evaluate("i => [i.naturalWidth, i.naturalHeight]")
            body = page.request.get(result.get_attribute("src")).body()
            return body, tuple(size)

        first, size = segment("cat, sofa, background")
        assert size[0] >= 4 * w and h < size[1] < 2 * h  # input | MaskCLIP | CLIP-DINOiser | objectness
        second, _ = segment("road, sky, tree, person")
        assert first != second  # another vocabulary, another segmentation
        _, clicked = segment(None, click={"x": 20, "y": 30})  # a point of the input: its correlations
        assert clicked[0] > size[0] and clicked[1] == size[1]  # one more panel
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        if os.environ.get("CLIP_DINOISER_APP_SCREENSHOT"):  # the README's picture
            shutil.copy(tmp_path / "app.png", os.environ["CLIP_DINOISER_APP_SCREENSHOT"])

        prompts.fill(" , ")
        page.locator("#segment").click()
        expect(page.get_by_text("Type at least one class name")).to_be_visible(timeout=60_000)
        page.goto(app_url)  # a fresh page for the next upload
        page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "broken.png"))
        prompts.fill("cat")
        page.locator("#segment").click()
        expect(page.get_by_text("cannot read image").first).to_be_visible(timeout=60_000)
        browser.close()
    shot = np.asarray(Image.open(tmp_path / "app.png"))
    assert shot.shape[1] == 1400 and shot.std() > 0
