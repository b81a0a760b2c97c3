"""Distil DINO correlations and FOUND objectness into the CLIP-DINOiser heads.

    python tools/train.py train.data=/path/to/imagenet/train teachers.found.decoder=decoder_weights.pt
    python tools/train.py train.resume=outputs/train/2024-01-01_00-00-00
    torchrun --nproc_per_node=4 tools/train.py train.data=... precision=bf16

The run folder gets config.yaml, train.log, checkpoints/ and last.pt (released format).
"""

from __future__ import annotations

import logging
import os

import hydra
from omegaconf import DictConfig, OmegaConf

from clip_dinoiser.engine.cli import resolve_device, user_errors_as_one_line
from clip_dinoiser.engine.train import check_run_inputs, train

log = logging.getLogger("train")


@user_errors_as_one_line
def run(cfg: DictConfig) -> str:
    device = resolve_device(cfg.device)
    config = OmegaConf.to_container(cfg, resolve=True)
    check_run_inputs(config)  # before any folder is made or model loaded
    run_dir = cfg.train.resume or cfg.train.output
    if os.environ.get("RANK", "0") == "0":
        os.makedirs(run_dir, exist_ok=True)
        OmegaConf.save(cfg, os.path.join(run_dir, "config.yaml"), resolve=True)
        handler = logging.FileHandler(os.path.join(run_dir, "train.log"))
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s"))
        logging.getLogger().addHandler(handler)
    return train(config, device)


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
