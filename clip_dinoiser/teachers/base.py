"""What a teacher is: a frozen network that gives the target of one student head."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Teacher(nn.Module):
    """A frozen teacher. Subclasses set ``head`` and implement ``target``; ``loss`` defaults to
    binary cross-entropy with logits (the paper's loss for both heads).

    A teacher of your own is named in the training config by the import path of a factory
    called with its ``TeacherConfig`` (``teachers.mine.type=my_package.teachers.build``).
    """

    head: str = "correlation"  # one of HEADS

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # frozen: always in eval mode

    def target(self, images: Tensor, grid: tuple[int, int], gamma: float) -> Tensor:
        """The target of ``head`` for B x 3 x H x W images in [0, 1], at the student's patch
        ``grid``; ``gamma`` is the correlation threshold (``model.gamma``)."""
        raise NotImplementedError

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """The loss of the student head's ``logits`` against ``target`` (a scalar)."""
        return F.binary_cross_entropy_with_logits(logits.float(), target)
