"""A web page to try CLIP-DINOiser on your images (Gradio; ``pip install -e ".[app]"``).

    python tools/app.py                                   # http://127.0.0.1:7860
    python tools/app.py model.checkpoint=released device=cuda port=8080 'examples=[a.jpg,b.jpg]'

Upload or pick an image, type comma-separated class names, press Segment: the result, MaskCLIP's
and the objectness map each get a tab at full width; the overlay and the label map download as
PNGs. Then click a point of the input image for the correlations of its patch: the correlations
were kept from the Segment call, so a click runs no backbone. The model is built once; each
vocabulary is encoded once (and cached on disk). Same config keys as the demo. Prints one line
when the model is ready, one with the page's URL, and one per request (its time, backbone passes).
"""

import dataclasses
import hashlib
import html
import os
import sys
import tempfile
import threading
import time
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from clip_dinoiser.config import AppConfig, SlideConfig, parse, register_configs
from clip_dinoiser.data.images import load_image
from clip_dinoiser.engine.job.cli import (
    USER_ERRORS,
    launch,
    main_process,
    one_line,
    resolve_device,
    user_errors_as_one_line,
)
from clip_dinoiser.engine.reporting.figures import (
    FigureData,
    ImageCorrelations,
    correlation_maps,
    correlation_panel,
    image_correlations,
    page_panels,
    segment_for_figure,
)
from clip_dinoiser.errors import UserError
from clip_dinoiser.models import build_model, parse_vocabulary
from clip_dinoiser.values import check_precision
from clip_dinoiser.visualize import MAX_INDEXED_CLASSES, label_images, mark_point

TABS = ("segmentation", "maskclip", "objectness", "correlations")  # the result's tabs, by id


def say(message: str) -> None:
    """One line for whoever runs the server, on stderr (hydra's quiet logging shows only warnings)."""
    print(f"[app] {message}", file=sys.stderr, flush=True)


def rejected(message: str):
    """A ``gr.Error`` for the page, a line in the server's output, no traceback (a user's mistake)."""
    import gradio as gr

    say(f"rejected: {message}")
    return gr.Error(html.escape(message), print_exception=False)


def read_upload(path: str) -> np.ndarray:
    """The uploaded image; a ``gr.Error`` in the page naming only the file (not the server's folder)
    for a folder, a vanished file or an unreadable image."""
    name = os.path.basename(path.rstrip(os.sep)) or path
    try:
        return load_image(path)
    except FileNotFoundError:
        raise rejected(f"{name} is no longer on the server: upload it again") from None
    except IsADirectoryError:
        raise rejected(f"{name} is a folder, not an image: upload an image file") from None
    except USER_ERRORS as e:  # unreadable, truncated, a decompression bomb, permissions
        raise rejected(one_line(e).replace(path, name)) from None


class PassCounter:
    """Forward calls of a module, counted per thread (Gradio answers each event in one worker thread),
    so a request's count is its own whatever runs beside it. A pre-hook that only counts, registered
    once: the figures' functions take the model as it is."""

    def __init__(self, module: Any) -> None:
        self._local = threading.local()
        module.register_forward_pre_hook(self._count)

    def _count(self, module: Any, args: Any) -> None:
        self._local.n = self.count + 1

    @property
    def count(self) -> int:
        return getattr(self._local, "n", 0)


@dataclasses.dataclass
class Session:
    """One browser tab's last segmentation (its ``gr.State``): what a click needs."""

    image: np.ndarray
    data: FigureData
    correlations: ImageCorrelations


class Segmenter:
    """The page's one model and its settings: ``segment`` answers Segment, ``click`` a click on the input."""

    def __init__(self, model: Any, slide: SlideConfig, precision: str, alpha: float) -> None:
        self.model, self.slide, self.precision, self.alpha = model, slide, precision, alpha
        self.passes = PassCounter(model.backbone)

    @staticmethod
    def vocabulary(prompts: str) -> tuple[tuple[str, ...], ...]:
        """The classes typed in the page (comma-separated), checked before anything is read."""
        names = [n.strip() for n in (prompts or "").split(",") if n.strip()]
        if not names:
            raise rejected("Type at least one class name, e.g. 'cat, sofa, background'.")
        if len(names) > MAX_INDEXED_CLASSES:
            raise rejected(f"At most {MAX_INDEXED_CLASSES} classes (the label map is an indexed PNG).")
        try:
            return parse_vocabulary(names)
        except UserError as e:  # a class listed twice
            raise rejected(str(e)) from None

    def segment(self, path: str | None, prompts: str, bg_refine: bool, compare: bool, folder: str):
        """Segment, compare, objectness and the correlations a click will read; the downloads (in ``folder``)."""
        import gradio as gr

        if not path:
            raise rejected("Upload an image or pick an example first.")
        t0, passes = time.perf_counter(), self.passes.count
        vocabulary = self.vocabulary(prompts)
        image = read_upload(path)
        self.model.set_vocabulary(vocabulary)
        names = self.model.class_names
        previous = self.model.decoding
        # None: on when 'background' is a class
        self.model.decoding = dataclasses.replace(previous, bg_refine=None if bg_refine else False)
        try:
            data = segment_for_figure(self.model, image, slide=self.slide, precision=self.precision, compare=compare)
        finally:
            self.model.decoding = previous
        corrs = image_correlations(self.model, image, scale=self.slide.scale)
        files = self.write_downloads(image, data.labels, names, os.path.basename(path), folder)
        panels = page_panels(image, data, names, alpha=self.alpha)
        seconds, passes = time.perf_counter() - t0, self.passes.count - passes
        say(f"segmented {os.path.basename(path)} ({image.shape[1]}x{image.shape[0]}, {len(names)} classes) in "
            f"{seconds:.2f} s, backbone passes: {passes}")
        status = (f"{data.title} on {image.shape[1]} x {image.shape[0]} pixels, {len(names)} classes: {seconds:.1f} s."
                  + (" Click a point of the input image for the correlations of its patch." if corrs.matrices else "")
                  + ("" if data.maskclip is not None else " MaskCLIP and objectness: tick *Compare with MaskCLIP*."))
        downloads = (gr.DownloadButton(value=f, visible=True) for f in files)
        return (Session(image, data, corrs), image, *(panels[k] for k in TABS[:3]), None, *downloads,
                gr.Tabs(selected=TABS[0]), status)

    def write_downloads(self, image: np.ndarray, labels: np.ndarray, names: list[str], upload: str,
                        folder: str) -> tuple[str, str]:
        """``<stem>_overlay.png`` (with a legend of the classes present) and ``<stem>_labels.png``
        (indexed: pixel value = class index, in the order typed)."""
        stem = os.path.splitext(upload)[0] or "image"
        paths = os.path.join(folder, f"{stem}_overlay.png"), os.path.join(folder, f"{stem}_labels.png")
        for path, im in zip(paths, label_images(image, labels, names, self.alpha)):
            im.save(path)
        return paths

    def click(self, session: Session | None, index: Any):
        """The correlations of the clicked patch, from the session's kept correlations: no backbone pass."""
        import gradio as gr

        if session is None:
            raise rejected("Press Segment first: a click shows the correlations of the segmented image.")
        if not session.correlations.matrices:
            raise rejected(f"{session.data.title} has no correlations to show (model=clip_dinoiser).")
        h, w = session.image.shape[:2]
        if index is None or len(index) != 2 or not (0 <= index[0] < w and 0 <= index[1] < h):
            raise rejected(f"Click inside the image ({w} x {h} pixels).")
        t0, passes = time.perf_counter(), self.passes.count
        point = (int(index[0]), int(index[1]))
        maps = correlation_maps(session.correlations, point)
        panel = correlation_panel(dataclasses.replace(session.data, correlations=maps, query=point))
        preview = mark_point(session.image, point, max(4, round(0.02 * max(h, w))))
        seconds, passes = time.perf_counter() - t0, self.passes.count - passes
        say(f"click ({point[0]}, {point[1]}) in {seconds:.3f} s, backbone passes: {passes}")
        return preview, panel, gr.Tabs(selected=TABS[3]), f"Correlations of the patch at {point}: {seconds:.2f} s."


def show_upload(path: str | None):
    """A new upload: its preview, and the last result cleared (a click needs a new Segment)."""
    import gradio as gr

    no_file = gr.DownloadButton(value=None, visible=False)
    return (read_upload(path) if path else None), None, *(None,) * len(TABS), no_file, no_file, ""


def build_page(segmenter: Segmenter, examples: list[str], downloads: str):
    """The Gradio page: the input and settings on the left, the result's tabs on the right; the
    downloads are written under ``downloads``."""
    import gradio as gr

    with gr.Blocks(title="CLIP-DINOiser") as page:
        gr.Markdown("## CLIP-DINOiser: open-vocabulary segmentation\nUpload an image, name the classes, press "
                    "**Segment**. Then click a point of the input image (below the file) to see the correlations of "
                    "its patch.")
        session = gr.State(None, time_to_live=3600)  # also dropped when the tab closes
        with gr.Row():
            with gr.Column(scale=1):
                # The file is read by our loader (clear messages for unreadable files); the preview
                # takes the clicks that query a patch's correlations.
                upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="upload")
                preview = gr.Image(type="numpy", format="png", show_label=False, interactive=False, buttons=[],
                                   elem_id="input-image")
                prompts = gr.Textbox(label="Classes (comma-separated)", value="cat, sofa, background",
                                     elem_id="prompts")
                bg_refine = gr.Checkbox(value=True, label="Background refinement (with a 'background' class)")
                compare = gr.Checkbox(value=True, label="Compare with MaskCLIP (same backbone pass)")
                run = gr.Button("Segment", variant="primary", elem_id="segment")
                status = gr.Markdown(elem_id="status")
                with gr.Row():  # shown with a result
                    overlay_file, labels_file = (
                        gr.DownloadButton(f"Download {what}", visible=False, size="md", elem_id=f"download-{kind}")
                        for what, kind in (("overlay", "overlay"), ("label map", "labels")))
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=[upload])
            with gr.Column(scale=2):
                with gr.Tabs(elem_id="result") as tabs:
                    panels = []
                    for tab, label in zip(TABS, ("Segmentation", "MaskCLIP", "Objectness", "Correlations")):
                        with gr.Tab(label, id=tab):
                            panels.append(gr.Image(type="numpy", format="png", show_label=False, interactive=False,
                                                   buttons=["download", "fullscreen"], elem_id=f"panel-{tab}"))
        outputs = [session, preview, *panels, overlay_file, labels_file, tabs, status]
        upload.change(show_upload, inputs=upload, outputs=[preview, session, *panels, overlay_file, labels_file,
                                                           status])

        def on_segment(path: str | None, text: str, bg: bool, cmp: bool, request: gr.Request):
            # One folder per browser session for its downloads (overwritten by its next Segment).
            folder = os.path.join(downloads, hashlib.sha256(str(request.session_hash).encode()).hexdigest()[:16])
            os.makedirs(folder, exist_ok=True)
            return segmenter.segment(path, text, bg, cmp, folder)

        for trigger in (run.click, prompts.submit):
            trigger(on_segment, inputs=[upload, prompts, bg_refine, compare], outputs=outputs)

        def on_click(state: Session | None, evt: gr.SelectData):
            return segmenter.click(state, evt.index)

        # A click only indexes kept correlations (no model call): it need not wait for others' Segment.
        preview.select(on_click, inputs=session, outputs=[preview, panels[3], tabs, status],
                       concurrency_limit=4, concurrency_id="click")
    return page


@user_errors_as_one_line
def run(cfg: DictConfig) -> None:
    settings = parse(AppConfig, cfg, "")  # every number finite and in range (port, alpha, slide)
    examples = [str(e) for e in cfg.examples or []]
    for e in examples:  # fail before the model is built
        load_image(e)
    device = resolve_device(cfg.device)
    check_precision(cfg.precision)
    slide = settings.slide
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError('the web app needs Gradio: pip install -e ".[app]"') from None
    t0 = time.perf_counter()
    say(f"loading {cfg.model.name} on {device} (a line per stage)")
    model = build_model(cfg.model).to(device)
    say(f"model ready in {time.perf_counter() - t0:.1f} s ({cfg.model.name} on {device})")
    with tempfile.TemporaryDirectory(prefix="clip_dinoiser_app_") as downloads:
        page = build_page(Segmenter(model, slide, cfg.precision, cfg.alpha), examples, downloads)
        page.queue(default_concurrency_limit=1).launch(
            server_name=cfg.host, server_port=cfg.port, share=False, show_error=True, quiet=True,
            prevent_thread_lock=True, allowed_paths=[downloads])
        try:
            say(f"CLIP-DINOiser demo ready: {page.local_url.rstrip('/')}  (Ctrl-C to stop)")
            # Not page.block_thread(): it swallows Ctrl-C and SIGTERM and exits 0; the signal's exit
            # code and line come from user_errors_as_one_line, as for every tool.
            while page.is_running:
                time.sleep(0.2)
        finally:
            page.close()


@hydra.main(config_path="../configs", config_name="app", version_base="1.3")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline lab
    run(cfg)


if __name__ == "__main__":
    main_process()
    register_configs()
    launch(main, schema=AppConfig, groups={"model": "clip_dinoiser"})
