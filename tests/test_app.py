"""The web app: its click handler against the engine, then the page in a real browser (Debian's
headless Chromium driven by Playwright, no browser download) with one server for all checks."""

import glob
import importlib.util
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from clip_dinoiser.config import SlideConfig
from clip_dinoiser.models import build_model
from clip_dinoiser.visualize import overlay, palette_for

from .conftest import TINY_CLIP_CFG, random_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]
NAMES = ["cat", "sofa", "background"]
H, W = 480, 640  # the photo: shown scaled down in the input column
MAX_PIXELS = 400_000  # the server's decompression-bomb limit: the photo reads, 1000 x 1000 does not


def _needs(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        pytest.skip(f'{module} is not installed (pip install -e ".[app]")')


def _app_module():
    spec = importlib.util.spec_from_file_location("clip_dinoiser_app", os.path.join(ROOT, "tools", "app.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_click_reads_the_kept_correlations_without_a_backbone_pass(model_cfg, tiny_teachers):
    """``correlation_maps`` of the kept matrices equal ``query_correlations``; the app's click
    handler runs no backbone, and answers a click outside the image (which Gradio's page never
    sends: it drops such clicks itself) or before Segment with a ``gr.Error`` for the page."""
    _needs("gradio")
    import gradio as gr

    from clip_dinoiser.engine.evaluation.inference import query_correlations, to_tensor
    from clip_dinoiser.engine.reporting.figures import FigureData, correlation_maps, image_correlations

    image = random_image(100, 150, seed=2)
    model = build_model(model_cfg)
    dino = build_model({"name": "dino_maskclip", "clip": model_cfg["clip"], "teachers": tiny_teachers,
                        "text_cache": None})
    for m, source in ((model, "CLIP-DINOiser"), (dino, "DINO")):
        kept = image_correlations(m, image, scale=(256, 64))
        assert set(kept.matrices) == {source}
        for point in ((0, 0), (120, 30), (149, 99)):
            full, _ = query_correlations(m, image, point, scale=(256, 64))[source]
            np.testing.assert_allclose(correlation_maps(kept, point)[source], full, atol=1e-6)

    app = _app_module()
    segmenter = app.Segmenter(model, SlideConfig(scale=(256, 64), crop=(64, 64), stride=(32, 32)), "fp32", 0.5)
    session = app.Session(image, FigureData(np.zeros((100, 150), np.int64), "CLIP-DINOiser"),
                          image_correlations(model, image, scale=(256, 64)))
    before = segmenter.passes.count
    preview, panel, _, status = segmenter.click(session, [120, 30])
    assert segmenter.passes.count == before  # no backbone pass
    assert preview.shape == image.shape and panel.shape[1] >= 150 and "(120, 30)" in status
    model.backbone(to_tensor(image)[None])
    assert segmenter.passes.count == before + 1  # the counter sees a pass
    for outside in ([150, 30], [-1, 5], [3, 100], None):
        with pytest.raises(gr.Error, match=r"Click inside the image \(150 x 100 pixels\)"):
            segmenter.click(session, outside)
    with pytest.raises(gr.Error, match="Press Segment first"):
        segmenter.click(None, [3, 4])


class Server:
    """tools/app.py with the tiny model in a subprocess: its URL and its output so far."""

    def __init__(self, folder, tiny_clip_file, tiny_heads_file) -> None:
        (folder / "tiny.json").write_text(json.dumps(TINY_CLIP_CFG))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.folder, self.uploads = folder, folder / "gradio"  # Gradio keeps uploads there
        env = {**os.environ, "GRADIO_TEMP_DIR": str(self.uploads), "CLIP_DINOISER_MAX_IMAGE_PIXELS": str(MAX_PIXELS)}
        self.stdout, self.stderr = open(folder / "stdout.log", "w"), open(folder / "stderr.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tools", "app.py"), f"port={port}", "device=cpu",
             f"model.clip.name={folder / 'tiny.json'}", f"model.clip.pretrained={tiny_clip_file[1]}",
             f"model.checkpoint={tiny_heads_file}", "model.proj_dim=16",
             "slide.scale=[512,128]", "slide.crop=[64,64]", "slide.stride=[32,32]"],
            cwd=folder, stdout=self.stdout, stderr=self.stderr, env=env)
        deadline = time.time() + 120
        while not (found := re.search(r"CLIP-DINOiser demo ready: (http://\S+)", self.output())):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                pytest.fail("the app did not start:\n" + self.output()[-3000:])
            time.sleep(0.2)
        self.url = found.group(1)

    def output(self, stream: str = "both") -> str:
        names = ("stdout", "stderr") if stream == "both" else (stream,)
        return "".join((self.folder / f"{n}.log").read_text() for n in names)

    def wait_for(self, pattern: str, after: int, timeout: float = 60) -> re.Match:
        """The first match of ``pattern`` in stderr after its first ``after`` characters."""
        deadline = time.time() + timeout
        while not (found := re.search(pattern, self.output("stderr")[after:])):
            assert time.time() < deadline, f"no {pattern!r} in the server's output:\n{self.output()[-3000:]}"
            time.sleep(0.1)
        return found

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.stdout.close()
        self.stderr.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_clip_file, tiny_heads_file):
    _needs("gradio")
    server = Server(tmp_path_factory.mktemp("app"), tiny_clip_file, tiny_heads_file)
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser(server):
    _needs("playwright")
    if not os.path.isfile(CHROMIUM):
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def segmented(server, browser):
    """A page that uploaded the photo and pressed Segment once: (page, photo)."""
    from playwright.sync_api import expect

    photo = random_image(H, W, seed=7)
    Image.fromarray(photo).save(server.folder / "photo.png")
    page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page.goto(server.url)
    page.locator("#upload input[type=file]").set_input_files(str(server.folder / "photo.png"))
    expect(page.locator("#input-image img")).to_have_count(1, timeout=30_000)
    page.locator("#prompts textarea").fill(", ".join(NAMES))
    page.locator("#segment").click()
    expect(page.locator("#panel-segmentation img")).to_have_count(1, timeout=60_000)
    yield page, photo
    page.close()


def shown(page, selector: str) -> tuple[np.ndarray, float, float]:
    """The image of ``selector`` as served (RGB), its displayed width in CSS pixels and the scale
    of its pixels on the screen (object-fit: scale-down: never enlarged)."""
    from playwright.sync_api import expect

    img = page.locator(selector)
    expect(img).to_be_visible(timeout=30_000)
    page.wait_for_function("s => { const i = document.querySelector(s); return i.complete && i.naturalWidth > 0 }",
                           arg=selector)
    box = img.bounding_box()
    natural_w, natural_h = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    scale = min(1.0, box["width"] / natural_w, box["height"] / natural_h)
    rgb = np.asarray(Image.open(io.BytesIO(page.request.get(img.get_attribute("src")).body()))
                     .convert("RGB"))
    assert rgb.shape[:2] == (natural_h, natural_w)
    return rgb, natural_w * scale, scale


def image_rows(panel: np.ndarray) -> tuple[int, int]:
    """First and last row of the picture in a page panel (rows with colour across > 90 % of the width)."""
    rows = np.flatnonzero((panel.min(axis=2) < 250).mean(axis=1) > 0.9)
    return int(rows[0]), int(rows[-1])


def text_height(band: np.ndarray) -> int:
    """Rows of the tallest line of dark text in ``band``, ignoring coloured things (legend
    swatches, colour bars) and their outlines."""
    coloured = (band.max(axis=2).astype(int) - band.min(axis=2)) > 30
    columns = np.convolve(coloured.any(axis=0), np.ones(5), mode="same") > 0
    dark = (band.max(axis=2) < 100) & ~columns[None, :]
    rows, longest, run = dark.any(axis=1), 0, 0
    for r in rows:
        run = run + 1 if r else 0
        longest = max(longest, run)
    return longest


@pytest.mark.slow
@pytest.mark.browser
def test_the_server_says_when_the_model_is_loaded_and_the_page_is_up(server):
    err = server.output("stderr")
    assert re.search(r"model ready in \d+\.\d s", err)
    assert err.index("model ready") < err.index(f"CLIP-DINOiser demo ready: {server.url}")


@pytest.mark.slow
@pytest.mark.browser
def test_the_result_panels_are_large_and_their_text_legible(segmented):
    """Each panel at least as wide as the input; titles and legends >= 12 CSS pixels high on the screen."""
    page, _ = segmented
    _, preview_width, _ = shown(page, "#input-image img")
    for tab, label in (("segmentation", "Segmentation"), ("maskclip", "MaskCLIP"), ("objectness", "Objectness")):
        page.get_by_role("tab", name=label).click()
        panel, width, scale = shown(page, f"#panel-{tab} img")
        assert width >= preview_width, (tab, width, preview_width)
        top, bottom = image_rows(panel)
        assert text_height(panel[:top]) * scale >= 12, tab  # the title
        assert text_height(panel[bottom + 1:]) * scale >= 12, tab  # the legend, or the colour bar's caption
        if tab != "objectness":  # the swatches of the legend are as high as its text
            legend = panel[bottom + 1:].astype(int) @ [65536, 256, 1]
            swatches = np.isin(legend, palette_for(NAMES).astype(int) @ [65536, 256, 1])
            assert swatches.any(axis=1).sum() * scale >= 12, tab
    page.get_by_role("tab", name="Segmentation").click()


@pytest.mark.slow
@pytest.mark.browser
def test_the_overlay_and_the_label_map_download(segmented, tmp_path):
    page, photo = segmented
    files = {}
    for kind in ("overlay", "labels"):
        with page.expect_download(timeout=30_000) as download:
            page.locator(f"#download-{kind}").click()
        files[kind] = tmp_path / download.value.suggested_filename
        download.value.save_as(files[kind])
    assert sorted(p.name for p in files.values()) == ["photo_labels.png", "photo_overlay.png"]
    labels = Image.open(files["labels"])
    assert labels.mode == "P" and labels.size == (W, H)
    values = np.asarray(labels)
    assert set(np.unique(values)) <= set(range(len(NAMES)))  # pixel value = class index
    palette = palette_for(NAMES)
    assert np.array_equal(np.asarray(labels.getpalette()[: 3 * len(NAMES)]).reshape(-1, 3), palette)
    shown_overlay = np.asarray(Image.open(files["overlay"]).convert("RGB"))
    assert shown_overlay.shape[0] == H and shown_overlay.shape[1] > W  # the overlay, then its legend
    assert np.array_equal(shown_overlay[:, :W], overlay(photo, values, palette, 0.5))


def ring_centre(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """The centre of the marker's pixels (pure red) that ``after`` has and ``before`` had not."""
    red = lambda a: (a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] < 60)  # noqa: E731
    ys, xs = np.nonzero(red(after) & ~red(before))
    assert len(xs) > 20, "no marker"
    return float(xs.mean()), float(ys.mean())


@pytest.mark.slow
@pytest.mark.browser
def test_a_click_marks_the_point_and_runs_no_backbone_pass(segmented, server):
    from playwright.sync_api import expect

    page, photo = segmented
    seg = server.wait_for(r"segmented photo\.png .* in (\d+\.\d+) s, backbone passes: (\d+)", 0)
    assert int(seg.group(2)) >= 2  # the windows, and the correlations a click will read
    box = page.locator("#input-image img").bounding_box()
    _, _, scale = shown(page, "#input-image img")
    target = (0.3 * box["width"], 0.6 * box["height"])  # the image fills its element (same aspect ratio)
    start, old = len(server.output("stderr")), page.locator("#input-image img").get_attribute("src")
    page.locator("#input-image img").click(position={"x": target[0], "y": target[1]})
    click = server.wait_for(r"click \((\d+), (\d+)\) in (\d+\.\d+) s, backbone passes: (\d+)", start)
    x, y = int(click.group(1)), int(click.group(2))
    assert abs(x - target[0] / scale) <= 2 and abs(y - target[1] / scale) <= 2
    assert int(click.group(4)) == 0  # the kept correlations, no backbone pass
    assert float(click.group(3)) < float(seg.group(1))
    print(f"segmentation {seg.group(1)} s, click {click.group(3)} s (server-side, tiny model)")
    expect(page.get_by_role("tab", name="Correlations")).to_have_attribute("aria-selected", "true")

    page.wait_for_function("([s, old]) => document.querySelector(s).src !== old", arg=["#input-image img", old])
    preview, preview_width, _ = shown(page, "#input-image img")
    cx, cy = ring_centre(photo, preview)
    assert abs(cx - x) <= 1.5 and abs(cy - y) <= 1.5
    panel, width, _ = shown(page, "#panel-correlations img")
    assert width >= preview_width
    top, _ = image_rows(panel)
    cx, cy = ring_centre(np.zeros_like(panel), panel)
    pw = panel.shape[1]
    assert abs(cx - (x + 0.5) * pw / W + 0.5) <= 1.5 and abs(cy - top - (y + 0.5) * pw / W + 0.5) <= 1.5

    # A click outside the picture: Gradio's page computes no pixel for it and sends nothing.
    page.locator("#input-image button").dispatch_event("click", {"clientX": 1, "clientY": 1})
    page.wait_for_timeout(500)
    assert "click" not in server.output("stderr")[start + click.end():].lower()
    page.get_by_role("tab", name="Segmentation").click()
    page.screenshot(path=str(server.folder / "app.png"), full_page=True)
    if os.environ.get("CLIP_DINOISER_APP_SCREENSHOT"):  # the README's picture
        shutil.copy(server.folder / "app.png", os.environ["CLIP_DINOISER_APP_SCREENSHOT"])
    assert "Traceback" not in server.output()


@pytest.mark.slow
@pytest.mark.browser
def test_bad_uploads_are_answered_in_the_page_without_a_traceback(server, browser):
    """A folder, a vanished file, a decompression bomb, a broken file, no classes: a message each."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    photo = random_image(H, W, seed=8)
    Image.fromarray(np.zeros((1000, 1000, 3), np.uint8)).save(server.folder / "bomb.png")
    (server.folder / "broken.png").write_bytes(b"not a png")
    cases = {"folder.png": "folder.png is a folder, not an image", "gone.png": "gone.png is no longer on the server",
             "bomb.png": "decompression bomb", "broken.png": "cannot read image broken.png"}
    for name, message in cases.items():
        if name in ("folder.png", "gone.png"):
            Image.fromarray(photo).save(server.folder / name)
        page.goto(server.url)
        page.locator("#upload input[type=file]").set_input_files(str(server.folder / name))
        if name in ("folder.png", "gone.png"):  # uploaded and shown, then gone from the server's disk
            expect(page.locator("#input-image img")).to_have_count(1, timeout=30_000)
            for path in glob.glob(str(server.uploads / "*" / name)):
                os.remove(path)
                if name == "folder.png":
                    os.mkdir(path)
            page.locator("#segment").click()
        expect(page.get_by_text(message).first).to_be_visible(timeout=30_000)
    page.locator("#prompts textarea").fill(" , ")
    page.locator("#segment").click()
    expect(page.get_by_text("Type at least one class name").first).to_be_visible(timeout=30_000)
    page.close()
    err = server.output("stderr")
    for message in (*cases.values(), "Type at least one class name"):
        assert re.search(r"\[app\] rejected: .*" + re.escape(message), err), message
    assert "Traceback" not in server.output()
