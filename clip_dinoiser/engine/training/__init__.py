"""Training: the one training loop, the runner around a training tool, the heads' distillation, MaskCLIP+."""
