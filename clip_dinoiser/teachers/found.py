"""FOUND teacher (Simeoni et al., CVPR 2023): objectness from DINO ViT-S/8 keys and a 1x1 decoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError
from ..ops import pad_to_multiple
from ..readers import read_weights
from .base import Teacher
from .vit import FrozenViT

# The reference pads every image to a multiple of 16 (``DinoCLIP.make_input_divisible`` with its
# ``vit_patch_size`` of 16, the CLIP / DINO patch) before FOUND's ViT-S/8 sees it
# (wysoczanska/clip_dinoiser, models/clip_dinoiser/clip_dinoiser.py, ``get_found_preds``); FOUND's own
# padding to its patch of 8 then changes nothing. At 375 x 500 that is a 48 x 64 grid, not 47 x 63.
REFERENCE_PAD = 16


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
        pad_to: images are zero-padded right/bottom to a multiple of this (before the ViT's own
            padding to its patch and the normalisation), as the reference did (``REFERENCE_PAD``).
    """

    head = "objectness"

    def __init__(self, vit: FrozenViT, decoder: nn.Conv2d, *, antialias: bool, pad_to: int = REFERENCE_PAD) -> None:
        super().__init__()
        self.vit = vit
        self.decoder = decoder.eval().requires_grad_(False)
        self.antialias = antialias
        self.pad_to = pad_to

    @torch.no_grad()
    def probabilities(self, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """B x 3 x H x W in [0, 1] -> B x 1 x h x w foreground probabilities (fp32).

        With ``size``, resized bilinearly (antialiased only with ``antialias``); otherwise h x w
        is the ViT's grid of the images padded to ``pad_to``.
        """
        images = pad_to_multiple(images, (self.pad_to, self.pad_to))
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
