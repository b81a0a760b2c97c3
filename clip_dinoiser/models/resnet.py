"""Frozen CLIP ResNet image tower (R-50, R-101, R-50x4, R-50x16) with MaskCLIP's dense features.

MaskCLIP (Zhou et al., ECCV 2022, Sec. 3.2, "ResNet"): the attention pool's query/key path is
dropped; its value and output projections (``v_proj`` then ``c_proj``) become 1x1 convolutions
on the last stage's feature map, giving one feature per location in CLIP's joint space. As in
MaskCLIP's ``MaskClipHead`` (``vit=False``), the attention pool's positional embedding is not
added (only its attentional pooling would read it), so any input size works without resizing it,
and the input is not padded: the grid is what the convolutions give (about H / 32 x W / 32) and
the evaluator resizes the scores to the image. Keys for key smoothing: ``k_proj`` applied the same
way. The stem and the four stages are open_clip's own modules, run as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import INPUTS
from ..values import check_choice
from .backbone import BackboneOutput, input_stats, prepare_input


def is_resnet_tower(visual: nn.Module) -> bool:
    """Whether ``visual`` is open_clip's ``ModifiedResNet`` (a stem, four stages, an attention pool)."""
    return all(hasattr(visual, a) for a in ("stem", "layer1", "layer2", "layer3", "layer4", "attnpool"))


class CLIPResNetBackbone(nn.Module):
    """Frozen open_clip ``ModifiedResNet`` exposing MaskCLIP's dense features and keys.

    Args:
        visual: an open_clip ``ModifiedResNet`` (``model.visual`` of ``RN50``, ``RN50x16``, ...).
        mean, std: normalisation of [0, 1] RGB input.
        input: ``model.clip.input`` (``clip`` or ``mmseg``; the tower is never padded).

    Attributes:
        patch_size: the tower's output stride (32), for the pixels-per-location of its grid.
        width: channels of the last stage (the attention pool's input).
        out_dim: channels of the dense features (CLIP's joint space).
    """

    def __init__(self, visual: nn.Module, *, mean: tuple[float, ...], std: tuple[float, ...],
                 input: str = "clip") -> None:
        super().__init__()
        if not is_resnet_tower(visual):
            raise TypeError("not an open_clip ModifiedResNet (stem, layer1..4, attnpool)")
        self.visual = visual.eval().requires_grad_(False)
        self.input = check_choice(input, INPUTS, "model.clip.input")
        pool = visual.attnpool
        self.patch_size = (32, 32)
        self.width = pool.v_proj.in_features
        self.out_dim = pool.c_proj.out_features
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_open_clip(cls, model: nn.Module, *, input: str = "clip") -> CLIPResNetBackbone:
        mean, std = input_stats(model.visual, input)
        return cls(model.visual, mean=mean, std=std, input=input)

    def train(self, mode: bool = True) -> CLIPResNetBackbone:
        # Frozen, BatchNorm included: eval mode whatever the parent module does.
        return super().train(False)

    def trunk(self, images: Tensor) -> Tensor:
        """B x 3 x H x W RGB in [0, 1] -> the last stage's map, B x width x h x w."""
        v = self.visual
        x = prepare_input(images, self.mean, self.std, (1, 1), self.input)  # (1, 1): no padding
        x = v.stem(x.to(v.conv1.weight.dtype))
        return v.layer4(v.layer3(v.layer2(v.layer1(x))))

    def forward(self, images: Tensor, *, with_inter: bool = True, with_keys: bool = False,
                with_dense: bool = True) -> BackboneOutput:
        """Run the tower once (``inter`` is always None: a ResNet has no ViT blocks for the heads).

        Args:
            images: B x 3 x H x W RGB in [0, 1], any H, W.
            with_keys: also return ``k_proj`` of the last stage's map, B x (h*w) x width.
            with_dense: compute the dense features (False: ``dense`` is None).
        """
        x = self.trunk(images)
        b, _, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # B x N x C, N = h * w
        pool = self.visual.attnpool
        dense = None
        if with_dense:  # v_proj then c_proj, each a 1x1 convolution
            v = F.linear(tokens, pool.v_proj.weight, pool.v_proj.bias)
            dense = F.linear(v, pool.c_proj.weight, pool.c_proj.bias).transpose(1, 2).reshape(b, -1, h, w)
        keys = F.linear(tokens, pool.k_proj.weight, pool.k_proj.bias) if with_keys else None
        return BackboneOutput(dense=dense, inter=None, keys=keys)
