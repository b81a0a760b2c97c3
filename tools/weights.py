"""Every weights file a tool needs: where it is, and a download of the missing ones where there is a network.

    python tools/weights.py                              # every tool, with its defaults
    python tools/weights.py train                        # one tool (demo, app, eval, train, train_target) ...
    python tools/weights.py eval model=dino_maskclip     # ... with the overrides you would run it with
    python tools/weights.py train_target --no-download   # only look
    CLIP_DINOISER_WEIGHTS=~/weights python tools/weights.py --copy   # a folder to carry to an offline machine

A file is found as the tools find it: the file a key names; a copy by its name in the weights
folder (CLIP_DINOISER_WEIGHTS, else checkpoints/; a hub tag's copy is <name>.<tag>.safetensors,
or .pt/.pth/.bin; the released heads' is last.pt, FOUND's decoder's decoder_weights.pt); the
download caches; else it is downloaded (hub tags by open_clip / huggingface_hub into the Hugging
Face cache, 'released' files into ~/.cache/clip_dinoiser/weights). For an offline machine: run
this where there is a network and copy each file it prints into the offline machine's weights
folder under the name it gives, or let --copy put each download in the weights folder under its
name. Exit code 2 (one line naming every missing file) when a file is neither here nor
downloadable.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from clip_dinoiser.engine.job.cli import main_process, user_errors_as_one_line

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
TOOLS = ("demo", "app", "eval", "train", "train_target")  # the tools that load weights (configs/<tool>.yaml)
TRAINING = {"train": "clip_dinoiser.engine.training.train",
            "train_target": "clip_dinoiser.engine.training.target_train"}
# Each tool's schema and config groups (as its own launch(...) names them), to check the overrides alike.
SCHEMAS = {"demo": ("DemoConfig", ("model",)), "app": ("AppConfig", ("model",)),
           "eval": ("EvalConfig", ("model", "data", "corruption")), "train": ("TrainConfig", ("model", "teachers")),
           "train_target": ("TrainTargetConfig", ("annotator",))}


def tool_config(tool: str, overrides: list[str]):
    """The tool's config as hydra composes it from ``configs/`` with ``overrides`` (a run to resume:
    its own saved config); a wrong override is a one-line error, as in the tool."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from clip_dinoiser import config
    from clip_dinoiser.engine.job.cli import one_line
    from clip_dinoiser.engine.job.hints import check_spelling, composition_error
    from clip_dinoiser.readers import read_config

    config.register_configs()
    schema, groups = SCHEMAS[tool]
    check_spelling(overrides, getattr(config, schema), dict.fromkeys(groups, ""), CONFIGS, f"tools/{tool}.py")
    try:
        with initialize_config_dir(config_dir=CONFIGS, version_base="1.3", job_name="weights"):
            cfg = compose(config_name=tool, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        cause = e if isinstance(e, OmegaConfBaseException) else e.__cause__
        if isinstance(cause, OmegaConfBaseException):
            raise config.config_error(cause) from None
        raise composition_error(e, CONFIGS) or config.ConfigError(one_line(e)) from None
    if tool in TRAINING and cfg.train.resume:
        return read_config(os.path.join(str(cfg.train.resume), "config.yaml"))
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))


def tool_weights(tool: str, cfg) -> list:
    """The ``weights.Weight`` rows the tool checks before it loads anything (the same functions)."""
    if tool in TRAINING:
        return importlib.import_module(TRAINING[tool]).run_weights(cfg)
    from clip_dinoiser.models import model_config
    from clip_dinoiser.models.build import model_weights

    return model_weights(model_config(cfg.model))


@user_errors_as_one_line
def run(args: argparse.Namespace) -> int:
    from clip_dinoiser.files import weights_folder
    from clip_dinoiser.weights import (
        CACHED,
        COPY,
        DOWNLOAD,
        MISSING,
        fetch_weight,
        keep_copy,
        locate_weights,
        missing_error,
    )

    tools = [args.tool] if args.tool else list(TOOLS)
    folder = weights_folder().rstrip(os.sep) + os.sep
    missing = {}
    print(f"weights folder: {folder} (CLIP_DINOISER_WEIGHTS, else checkpoints/)", flush=True)
    for tool in tools:
        rows = locate_weights(tool_weights(tool, tool_config(tool, args.overrides)))
        print(f"{tool}: {len(rows)} weights file{'s' if len(rows) != 1 else ''}", flush=True)
        for w, path, how in rows:
            if how == DOWNLOAD and not args.no_download:
                print(f"  {w.key}={w.value}  ({w.what}): downloading from {w.source}", flush=True)
                path, how = fetch_weight(w), CACHED
            if args.copy and how == CACHED:
                path, how = keep_copy(w, path), COPY
            print(f"  {w.key}={w.value}  ({w.what})")
            if how == DOWNLOAD:
                print(f"      not here: downloaded on first use from {w.source} (a copy: {folder}{w.file})")
            elif how == MISSING and w.file is None:
                print(f"      MISSING: {w.value} is not a file")
            elif how == MISSING:
                print(f"      MISSING: put {w.file} in {folder} (from {w.source})")
            else:
                print(f"      {path}  ({how})")
            if how == MISSING:
                missing[w.key] = w
    sys.stdout.flush()
    if missing:
        raise missing_error(list(missing.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tool", nargs="?", choices=TOOLS, help="the tool whose weights to find (default: every tool)")
    p.add_argument("overrides", nargs="*", help="the tool's key=value overrides, as you would run it")
    p.add_argument("--no-download", action="store_true", help="only look: download nothing")
    p.add_argument("--copy", action="store_true",
                   help="put each downloaded (or cached) file in the weights folder too, under its name")
    args = p.parse_intermixed_args(argv)
    if args.overrides and not args.tool:
        p.error("overrides need the tool they are for: python tools/weights.py <tool> key=value ...")
    return run(args)


if __name__ == "__main__":
    main_process()
    sys.exit(main())
