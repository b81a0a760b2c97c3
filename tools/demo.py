"""Segment one image into the classes named in ``prompts``.

    python tools/demo.py image=photo.jpg 'prompts=[cat,sofa,background]' output=out/
    python tools/demo.py image=photo.jpg 'prompts=["猫","chien"]'     # non-Latin names: quote each one
    python tools/demo.py image=photo.jpg prompts_file=classes.txt      # one class per line (UTF-8)

Writes ``<output>/<name>_mask.png`` (palette overlay with a legend of the classes present),
``<output>/<name>_labels.png`` (indexed label map, pixel value = prompt index) and, with
``figure=true`` (the default), ``<output>/<name>_figure.png``: input | MaskCLIP | CLIP-DINOiser |
objectness, one shared legend (MaskCLIP's panel comes from the same backbone pass).
"""

from __future__ import annotations

import logging
import os
import sys
import time

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from clip_dinoiser.data.images import load_image
from clip_dinoiser.engine.cli import resolve_device, user_errors_as_one_line
from clip_dinoiser.engine.inference import SlideConfig, check_precision, segment, segment_panels
from clip_dinoiser.files import check_output_dir
from clip_dinoiser.models import build_model, parse_vocabulary, read_vocabulary_file
from clip_dinoiser.visualize import (
    MAX_INDEXED_CLASSES,
    add_legend,
    heat_map,
    make_palette,
    overlay,
    save_indexed,
    side_by_side,
)

log = logging.getLogger("demo")


def write_figure(path: str, image: np.ndarray, segmentations: dict[str, np.ndarray], objectness: np.ndarray | None,
                 names: list[str], alpha: float) -> None:
    """Input | each segmentation as an overlay | the objectness map, one legend of the classes shown."""
    palette = make_palette(len(names))
    panels = [("Input", image)] + [(title, overlay(image, seg, palette, alpha)) for title, seg in segmentations.items()]
    if objectness is not None:
        panels.append(("Objectness", heat_map(objectness)))
    shown = sorted(set().union(*(np.unique(seg).tolist() for seg in segmentations.values())))
    Image.fromarray(side_by_side(panels, [(names[i], tuple(int(c) for c in palette[i])) for i in shown])).save(path)


def demo_vocabulary(prompts, prompts_file: str | None):
    """The classes from ``prompts`` (a list or one name) or ``prompts_file`` (one class per line)."""
    if prompts_file:
        if prompts is not None:
            raise ValueError("give prompts or prompts_file, not both")
        return read_vocabulary_file(str(prompts_file))
    if prompts is None:
        raise ValueError("no classes: give 'prompts=[cat,sofa]' (quote non-Latin names: 'prompts=[\"猫\",chien]') "
                         "or prompts_file=<one class per line>")
    return parse_vocabulary([prompts] if isinstance(prompts, str) else list(prompts))


@user_errors_as_one_line
def run(cfg: DictConfig) -> dict[str, str]:
    check_output_dir(cfg.output, "output")  # everything is checked before the model is built
    vocab = demo_vocabulary(cfg.prompts, cfg.prompts_file)
    if len(vocab) > MAX_INDEXED_CLASSES:
        raise ValueError(f"{len(vocab)} classes: the label map (an indexed PNG) holds at most {MAX_INDEXED_CLASSES}")
    image = load_image(str(cfg.image))
    device = resolve_device(cfg.device)
    check_precision(cfg.precision)
    slide = SlideConfig.from_cfg(cfg.slide)

    t0 = time.perf_counter()
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True)).to(device)
    model.set_vocabulary(vocab)
    t1 = time.perf_counter()
    panels = cfg.figure and hasattr(model, "forward_panels")
    if panels:  # one backbone pass per window gives the segmentation and the figure's panels
        labels, maskclip_labels, objectness = segment_panels(model, image, cfg=slide, precision=cfg.precision)
    else:
        labels, _ = segment(model, image, cfg=slide, precision=cfg.precision)
    t2 = time.perf_counter()

    names = model.class_names
    palette = make_palette(len(names))
    present = [int(i) for i in np.unique(labels)]
    os.makedirs(cfg.output, exist_ok=True)
    stem = os.path.splitext(os.path.basename(str(cfg.image)))[0]
    mask_path = os.path.join(cfg.output, f"{stem}_mask.png")
    labels_path = os.path.join(cfg.output, f"{stem}_labels.png")
    Image.fromarray(add_legend(overlay(image, labels, palette, cfg.alpha), names, palette, present)).save(mask_path)
    save_indexed(labels, palette, labels_path)
    written = {"mask": mask_path, "labels": labels_path}
    if cfg.figure:
        written["figure"] = os.path.join(cfg.output, f"{stem}_figure.png")
        shown = {type(model).__name__: labels} if not panels else {"MaskCLIP": maskclip_labels, "CLIP-DINOiser": labels}
        write_figure(written["figure"], image, shown, objectness if panels else None, names, cfg.alpha)
    log.info("model ready in %.2fs, segmented %dx%d image in %.2fs; classes present: %s",
             t1 - t0, image.shape[1], image.shape[0], t2 - t1, ", ".join(names[i] for i in present))
    log.info("wrote %s", ", ".join(written.values()))
    return written


def check_prompts_argument(argv: list[str]) -> None:
    """Hydra's grammar rejects unquoted names outside ASCII letters (``prompts=[猫,chien]``) with
    a lexer message; say instead how to quote them, in one line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for arg in argv:
        if arg.startswith("prompts=") and not arg.isascii():
            try:
                OverridesParser.create().parse_overrides([arg])
            except Exception:  # hydra's grammar errors
                print(f"error: hydra cannot parse {arg}: quote each name, e.g. 'prompts=[\"猫\",\"chien\"]', "
                      "or use prompts_file=<UTF-8 file, one class per line>", file=sys.stderr)
                sys.exit(2)


@hydra.main(config_path="../configs", config_name="demo", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    check_prompts_argument(sys.argv[1:])
    main()
