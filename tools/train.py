"""Distil DINO correlations and FOUND objectness into the CLIP-DINOiser heads.

    python tools/train.py train.data=/path/to/imagenet/train      # FOUND decoder: the released file
    python tools/train.py train.resume=outputs/train/2024-01-01_00-00-00
    python tools/train.py -m model.feats_idx=-2,-3 train.data=... eval.enabled=true eval.data.name=voc
    torchrun --nproc_per_node=4 tools/train.py train.data=... precision=bf16

The run folder gets config.yaml, train.log, checkpoints/ and last.pt (released format).
A resumed run takes every setting from its config.yaml; only the keys in ``RESUME_FREE`` may
be given anew (``train.epochs`` extends the run, and is recorded in train.log).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from clip_dinoiser.config import TrainConfig, TrainSettings, register_configs
from clip_dinoiser.engine.job.cli import launch, main_process, user_errors_as_one_line
from clip_dinoiser.engine.job.resume import resume_free
from clip_dinoiser.engine.training.runner import TrainingTool, run_training_tool

# torch, the models and the teachers are imported once the command line is checked.

# Any other setting given with train.resume must equal the run's own.
RESUME_FREE = resume_free("train.epochs")


HEADS = TrainingTool(TrainSettings, RESUME_FREE, "clip_dinoiser.engine.training.train",
                     lambda config, last: {**config["model"], "name": "clip_dinoiser", "checkpoint": last},
                     TrainConfig)


@user_errors_as_one_line
def run(cfg: DictConfig) -> str | None:
    """Train (or resume) one run (``engine/training/runner.py``)."""
    return run_training_tool(cfg, HEADS)


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main_process()
    register_configs()
    launch(main, schema=TrainConfig, groups={"model": "clip_dinoiser", "teachers": "paper"})
