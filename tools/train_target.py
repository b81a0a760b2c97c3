"""MaskCLIP+ on our annotators: train a segmentation network from free labels.

    python tools/train_target.py train.benchmark=context59                        # CLIP-DINOiser labels, 4k its
    python tools/train_target.py annotator=maskclip train.benchmark=coco_stuff     # MaskCLIP's labels, 8k its
    python tools/train_target.py train.benchmark=folder train.data=photos/ train.vocabulary=classes.txt
    python tools/train_target.py train.resume=outputs/train_target/2026-11-30_10-00-00
    torchrun --nproc_per_node=4 tools/train_target.py train.benchmark=context59 precision=bf16

A DeepLabv2 (dilated ResNet-101, ASPP 6/12/18/24) whose classifier is the frozen text embeddings
of the benchmark's classes is trained on the benchmark's training images (label files are never
opened) from the annotator's argmax on each augmented crop, with MaskCLIP+'s schedule (SGD 0.01,
poly, batch 16). The run folder gets config.yaml, train.log, metrics.jsonl, checkpoints/ and
last.pt; evaluate it with ``python tools/eval.py model=target model.checkpoint=<run>/last.pt``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from clip_dinoiser.config import TargetTrainSettings, TrainTargetConfig, register_configs
from clip_dinoiser.engine.job.cli import launch, main_process, user_errors_as_one_line
from clip_dinoiser.engine.job.resume import resume_free
from clip_dinoiser.engine.training.runner import TrainingTool, run_training_tool

# Any other setting given with train.resume must equal the run's own.
RESUME_FREE = resume_free("train.iterations")

TARGET = TrainingTool(TargetTrainSettings, RESUME_FREE, "clip_dinoiser.engine.training.target_train",
                      lambda config, last: {"name": "target", "checkpoint": last,
                                            "clip": config["annotator"].get("clip", {}),
                                            "text_cache": config["annotator"].get("text_cache", "auto")},
                      TrainTargetConfig)


@user_errors_as_one_line
def run(cfg: DictConfig) -> str | None:
    """Train (or resume) one MaskCLIP+ run (``engine/training/runner.py``)."""
    return run_training_tool(cfg, TARGET)


@hydra.main(config_path="../configs", config_name="train_target", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main_process()
    register_configs()
    launch(main, schema=TrainTargetConfig, groups={"annotator": "clip_dinoiser"})
