"""Segment one image into the classes named in ``prompts``.

    python tools/demo.py image=photo.jpg 'prompts=[cat,sofa,background]' output=out/

Writes ``<output>/<name>_mask.png`` (palette overlay with a legend of the classes present)
and ``<output>/<name>_labels.png`` (indexed label map, pixel value = prompt index).
"""

from __future__ import annotations

import logging
import os
import time

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from clip_dinoiser.data.images import load_image
from clip_dinoiser.engine.cli import resolve_device, user_errors_as_one_line
from clip_dinoiser.engine.inference import SlideConfig, segment
from clip_dinoiser.models import build_model, parse_vocabulary
from clip_dinoiser.visualize import add_legend, make_palette, overlay, save_indexed

log = logging.getLogger("demo")


@user_errors_as_one_line
def run(cfg: DictConfig) -> dict[str, str]:
    prompts = cfg.prompts
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    vocab = parse_vocabulary(prompts)  # fail on empty/duplicate prompts before loading models
    image = load_image(str(cfg.image))
    device = resolve_device(cfg.device)

    t0 = time.perf_counter()
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True)).to(device)
    model.set_vocabulary(vocab)
    t1 = time.perf_counter()
    slide = SlideConfig.from_cfg(cfg.slide)
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
    log.info("model ready in %.2fs, segmented %dx%d image in %.2fs; classes present: %s",
             t1 - t0, image.shape[1], image.shape[0], t2 - t1, ", ".join(names[i] for i in present))
    log.info("wrote %s and %s", mask_path, labels_path)
    return {"mask": mask_path, "labels": labels_path}


@hydra.main(config_path="../configs", config_name="demo", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
