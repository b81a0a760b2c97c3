"""FOUND teacher (Simeoni et al., CVPR 2023): objectness from DINO ViT-S/8 keys and a 1x1 decoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError
from ..readers import read_weights
from .base import Teacher
from .vit import FrozenViT


def load_found_decoder(path: str, in_dim: int) -> nn.Conv2d:
    """FOUND's official ``decoder_weights.pt``: ``{"decoder": {"weight": 1 x C x 1 x 1, "bias": 1}}``."""
    state = read_weights(path, "FOUND decoder weights")
    if not isinstance(state, dict) or not isinstance(state.get("decoder"), dict):
        raise UserError(f"{path} is not a FOUND decoder file ({{'decoder': {{'weight', 'bias'}}}})")
    decoder = nn.Conv2d(in_dim, 1, 1)
    weight = state["decoder"].get("weight")
    if weight is None or tuple(weight.shape) != (1, in_dim, 1, 1):
        shape = None if weight is None else tuple(weight.shape)
        raise UserError(f"FOUND decoder {path}: weight of shape {shape}, expected (1, {in_dim}, 1, 1)")
    bias = state["decoder"].get("bias")
    if bias is None or tuple(bias.shape) != (1,) or set(state["decoder"]) != {"weight", "bias"}:
        raise UserError(f"FOUND decoder {path}: expected exactly a weight (1, {in_dim}, 1, 1) and a bias (1,), "
                        f"found {sorted(state['decoder'])}")
    decoder.load_state_dict(state["decoder"])
    return decoder.eval().requires_grad_(False)


class FOUNDTeacher(Teacher):
    """Foreground probability per DINO ViT-S/8 patch, resized to a target grid.

    Args:
        vit: frozen DINO ViT-S/8.
        decoder: FOUND's 1x1 convolution on the last block's key features.
        antialias: antialias the resize to the target grid. The reference ran on torchvision
            0.13.1, whose tensor ``resize`` does not antialias (plain bilinear interpolation,
            ``align_corners=False``); antialiasing, today's torchvision default, flips 2-3 % of
            the binary targets at 448 x 448.
    """

    head = "objectness"

    def __init__(self, vit: FrozenViT, decoder: nn.Conv2d, *, antialias: bool) -> None:
        super().__init__()
        self.vit = vit
        self.decoder = decoder.eval().requires_grad_(False)
        self.antialias = antialias

    @torch.no_grad()
    def probabilities(self, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """B x 3 x H x W in [0, 1] -> B x 1 x h x w foreground probabilities (fp32).

        With ``size``, resized bilinearly (antialiased only with ``antialias``).
        """
        _, k, _ = self.vit.last_qkv(images)
        gh, gw = self.vit.grid(images)
        feats = k.transpose(1, 2).reshape(k.shape[0], -1, gh, gw)
        probs = torch.sigmoid(self.decoder(feats.to(self.decoder.weight.dtype)).float())
        if size is not None and tuple(size) != (gh, gw):
            probs = TF.resize(probs, list(size), antialias=self.antialias)
        return probs

    @torch.no_grad()
    def target(self, images: Tensor, grid: tuple[int, int], gamma: float) -> Tensor:
        """Binary objectness target at ``grid``: probability > 0.5, B x 1 x h x w float."""
        return (self.probabilities(images, grid) > 0.5).float()
