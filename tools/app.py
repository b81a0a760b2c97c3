"""A web page to try CLIP-DINOiser on your images (Gradio; ``pip install -e ".[app]"``).

    python tools/app.py                                   # http://127.0.0.1:7860
    python tools/app.py model.checkpoint=released device=cuda port=8080 'examples=[a.jpg,b.jpg]'

Upload or pick an image, type comma-separated class names, press Segment. Click a point of the
input image for the correlation map of its patch. The model is built once; each vocabulary is
encoded once (and cached on disk). Same config keys as the demo.
"""

import dataclasses
import logging
import os
from typing import Any

import hydra
from omegaconf import DictConfig

from clip_dinoiser.config import SlideConfig, parse, register_configs
from clip_dinoiser.data.images import load_image
from clip_dinoiser.engine.cli import launch, resolve_device, user_errors_as_one_line
from clip_dinoiser.engine.figures import figure, segment_for_figure
from clip_dinoiser.engine.inference import check_precision
from clip_dinoiser.errors import UserError
from clip_dinoiser.models import build_model, parse_vocabulary
from clip_dinoiser.visualize import MAX_INDEXED_CLASSES

log = logging.getLogger("app")


class Segmenter:
    """The page's one model and its settings; ``__call__`` answers one request."""

    def __init__(self, model: Any, slide: SlideConfig, precision: str, alpha: float) -> None:
        self.model, self.slide, self.precision, self.alpha = model, slide, precision, alpha

    def __call__(self, image_path: str | None, prompts: str, bg_refine: bool, compare: bool,
                 query: tuple[int, int] | None = None):
        import gradio as gr

        if not image_path:
            raise gr.Error("Upload an image or pick an example first.")
        names = [n.strip() for n in (prompts or "").split(",") if n.strip()]
        if not names:
            raise gr.Error("Type at least one class name, e.g. 'cat, sofa, background'.")
        if len(names) > MAX_INDEXED_CLASSES:
            raise gr.Error(f"At most {MAX_INDEXED_CLASSES} classes.")
        try:
            image = load_image(image_path)
            self.model.set_vocabulary(parse_vocabulary(names))
        except ValueError as e:  # an unreadable file, a class listed twice
            raise gr.Error(str(e).replace(image_path, os.path.basename(image_path))) from None
        previous = self.model.decoding
        # None: on when 'background' is a class
        self.model.decoding = dataclasses.replace(previous, bg_refine=None if bg_refine else False)
        try:
            data = segment_for_figure(self.model, image, slide=self.slide, precision=self.precision,
                                      compare=compare, query=query)
        finally:
            self.model.decoding = previous
        return figure(image, data, self.model.class_names, alpha=self.alpha)


def show_image(path: str | None):
    """The uploaded file as an image, or a message in the page saying why it cannot be read."""
    import gradio as gr

    if not path:
        return None
    try:
        return load_image(path)
    except ValueError as e:
        raise gr.Error(str(e).replace(path, os.path.basename(path))) from None


def build_page(segmenter: Segmenter, examples: list[str]):
    """The Gradio page: inputs on the left, the figure on the right."""
    import gradio as gr

    with gr.Blocks(title="CLIP-DINOiser") as page:
        gr.Markdown("## CLIP-DINOiser: open-vocabulary segmentation\nUpload an image, name the classes, "
                    "press **Segment**. Click the input image to see the correlations of that patch.")
        with gr.Row():
            with gr.Column(scale=1):
                # The file is read by our loader (clear messages for unreadable files); the preview
                # takes the clicks that query a patch's correlations.
                upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="upload")
                preview = gr.Image(type="numpy", label="Click a point: correlations of its patch",
                                   interactive=False, elem_id="input-image")
                prompts = gr.Textbox(label="Classes (comma-separated)", value="cat, sofa, background",
                                     elem_id="prompts")
                bg_refine = gr.Checkbox(value=True, label="Background refinement (with a 'background' class)")
                compare = gr.Checkbox(value=True, label="Compare with MaskCLIP (same backbone pass)")
                run = gr.Button("Segment", variant="primary", elem_id="segment")
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=[upload])
            with gr.Column(scale=2):
                result = gr.Image(type="numpy", label="Result", elem_id="result", interactive=False)
        inputs = [upload, prompts, bg_refine, compare]
        upload.change(show_image, inputs=upload, outputs=preview)
        run.click(segmenter, inputs=inputs, outputs=result)
        prompts.submit(segmenter, inputs=inputs, outputs=result)

        def on_click(path, text, bg, cmp, evt: gr.SelectData):
            return segmenter(path, text, bg, cmp, query=(int(evt.index[0]), int(evt.index[1])))

        preview.select(on_click, inputs=inputs, outputs=result)
    return page


@user_errors_as_one_line
def run(cfg: DictConfig) -> None:
    examples = [str(e) for e in cfg.examples or []]
    for e in examples:  # fail before the model is built
        load_image(e)
    device = resolve_device(cfg.device)
    check_precision(cfg.precision)
    slide = parse(SlideConfig, cfg.slide, "slide")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError('the web app needs Gradio: pip install -e ".[app]"') from None
    model = build_model(cfg.model).to(device)
    page = build_page(Segmenter(model, slide, cfg.precision, cfg.alpha), examples)
    log.info("serving on http://%s:%d", cfg.host, cfg.port)
    page.queue(default_concurrency_limit=1).launch(server_name=cfg.host, server_port=cfg.port, share=False,
                                                   show_error=True, quiet=True)


@hydra.main(config_path="../configs", config_name="app", version_base="1.3")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline lab
    run(cfg)


if __name__ == "__main__":
    register_configs()
    launch(main)
