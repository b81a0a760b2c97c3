"""Segment one image into the classes named in ``prompts``.

    python tools/demo.py image=photo.jpg 'prompts=[cat,sofa,background]' output=out/
    python tools/demo.py image=photo.jpg 'prompts=["猫","chien"]'     # non-Latin names: quote each one
    python tools/demo.py image=photo.jpg prompts_file=classes.txt      # one class per line (UTF-8)
    python tools/demo.py image=photos/ 'prompts=[cat,sofa]'           # a folder (or a glob: 'image=photos/*.jpg')
    python tools/demo.py image=photo.jpg 'prompts=[cat,sofa]' 'query=[120,80]'   # + correlations of that pixel

Writes ``<output>/<name>_mask.png`` (palette overlay with a legend of the classes present),
``<output>/<name>_labels.png`` (indexed label map, pixel value = prompt index) and, with
``figure=true`` (the default), ``<output>/<name>_figure.png``: input | MaskCLIP | CLIP-DINOiser |
objectness, one shared legend (MaskCLIP's panel comes from the same backbone pass).
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

import hydra
import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from clip_dinoiser.config import DemoConfig, parse, register_configs
from clip_dinoiser.data.images import load_image
from clip_dinoiser.engine.job.cli import launch, main_process, one_line, resolve_device, user_errors_as_one_line
from clip_dinoiser.engine.job.runs import refuse_existing
from clip_dinoiser.errors import UserError
from clip_dinoiser.files import check_output_dir
from clip_dinoiser.readers import IMAGE_EXTENSIONS
from clip_dinoiser.values import check_precision
from clip_dinoiser.visualize import MAX_INDEXED_CLASSES
from clip_dinoiser.vocabulary import parse_vocabulary, read_vocabulary_file

if TYPE_CHECKING:
    from clip_dinoiser.engine.reporting.figures import FigureData

log = logging.getLogger("demo")


def demo_vocabulary(prompts, prompts_file: str | None):
    """The classes from ``prompts`` (a list or one name) or ``prompts_file`` (one class per line)."""
    if prompts_file:
        if prompts is not None:
            raise UserError("give prompts or prompts_file, not both")
        return read_vocabulary_file(str(prompts_file), "prompts_file")
    if prompts is None:
        raise UserError("no classes: give 'prompts=[cat,sofa]' (quote non-Latin names: 'prompts=[\"猫\",chien]') "
                         "or prompts_file=<one class per line>")
    return parse_vocabulary([prompts] if isinstance(prompts, str) else list(prompts))


def demo_images(spec: str) -> tuple[list[str], bool]:
    """The image files of ``image=``: one file, a folder (its images, sorted) or a glob pattern;
    and whether it named one file (then an unreadable image is an error, not a skip)."""
    if os.path.isfile(spec):
        return [spec], True
    if os.path.isdir(spec):
        paths = sorted(os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(IMAGE_EXTENSIONS))
    elif glob.has_magic(spec):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    else:
        return [spec], True  # load_image names the missing file
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in image={spec}")
    return paths, False


def write_outputs(image: np.ndarray, data: FigureData, names: list[str], stem: str, cfg: DictConfig) -> list[str]:
    """<stem>_mask.png, <stem>_labels.png and (figure=true) <stem>_figure.png in ``cfg.output``
    (``engine.reporting.figures.write_pictures``, as the Python API's ``Segmentation.save``)."""
    from clip_dinoiser.engine.reporting.figures import write_pictures

    return write_pictures(cfg.output, stem, image, data, names, alpha=cfg.alpha, with_figure=cfg.figure)


def output_stems(paths: list[str]) -> list[str]:
    """The output name of each image: its file name without the suffix (photo.jpg and photo.png in
    one folder: photo, photo_2)."""
    stems: list[str] = []
    for path in paths:
        stem = base = os.path.splitext(os.path.basename(path))[0]
        for k in itertools.count(2):
            if stem not in stems:
                break
            stem = f"{base}_{k}"
        stems.append(stem)
    return stems


def output_paths(cfg: DictConfig, stem: str) -> list[str]:
    from clip_dinoiser.engine.reporting.figures import picture_paths

    return picture_paths(cfg.output, stem, with_figure=cfg.figure)


@user_errors_as_one_line
def run(cfg: DictConfig) -> list[str]:
    cfg_checked = parse(DemoConfig, cfg, "")  # every number finite and in range
    check_output_dir(cfg.output, "output")  # everything is checked before the model is built
    vocab = demo_vocabulary(cfg.prompts, cfg.prompts_file)
    if len(vocab) > MAX_INDEXED_CLASSES:
        raise UserError(f"{len(vocab)} classes: the label map (an indexed PNG) holds at most {MAX_INDEXED_CLASSES}")
    paths, single = demo_images(str(cfg.image))
    stems = output_stems(paths)
    if not cfg.overwrite:
        refuse_existing([p for stem in stems for p in output_paths(cfg, stem)], f"output={cfg.output}", "the demo")
    first = load_image(paths[0]) if single else None
    query = cfg_checked.query
    if query is not None and not single:
        raise UserError(f"query={list(cfg.query)}: give one pixel [x, y] of a single image")
    check_precision(cfg.precision)
    log.info("loading %s: torch, then its weights (a line per stage)", cfg.model.name)
    device = resolve_device(cfg.device)
    from clip_dinoiser.engine.evaluation.inference import check_point
    from clip_dinoiser.engine.reporting.figures import segment_for_figure
    from clip_dinoiser.models import build_model

    if query is not None:
        check_point(query, first.shape)
    slide = cfg_checked.slide
    t0 = time.perf_counter()
    model = build_model(cfg.model).to(device)
    model.set_vocabulary(vocab)
    log.info("model ready in %.2fs", time.perf_counter() - t0)
    os.makedirs(cfg.output, exist_ok=True)
    written, skipped = [], []
    for path, stem in tqdm(list(zip(paths, stems)), desc="segmenting", unit="img", disable=single or not cfg.progress):
        try:
            image = first if single else load_image(path)
        except (OSError, UserError) as e:  # one unreadable file of many, whatever the reason: reported, not fatal
            log.warning("skipped: %s", one_line(e))
            skipped.append(path)
            continue
        t1 = time.perf_counter()
        data = segment_for_figure(model, image, slide=slide, precision=cfg.precision, compare=cfg.figure, query=query)
        written += write_outputs(image, data, model.class_names, stem, cfg)
        log.info("%s (%dx%d) in %.2fs; classes present: %s", path, image.shape[1], image.shape[0],
                 time.perf_counter() - t1, ", ".join(model.class_names[i] for i in np.unique(data.labels)))
    log.info("segmented %d image(s) into %s%s", len(paths) - len(skipped), cfg.output,
             f"; skipped {len(skipped)} unreadable: {', '.join(skipped)}" if skipped else "")
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
    main_process()
    check_prompts_argument(sys.argv[1:])
    register_configs()
    launch(main, schema=DemoConfig, groups={"model": "clip_dinoiser"})
