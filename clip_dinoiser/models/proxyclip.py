"""ProxyCLIP (Lan et al., ECCV 2024): CLIP's last attention computed from another model's features.

A vision foundation model (the *proxy*: DINO ViT-B/8 in the authors' code) sees the same window as CLIP;
the cosine similarities of its patch features, shifted, scaled and masked, are the attention with which
CLIP's last block mixes its values (Sec. 3.2 of the paper, "proxy attention"). For a window:

1. the window is zero-padded around, in CLIP's normalised space, to a multiple of ``pad_to`` (56: their
   ``compute_padsize``), the odd pixel right / bottom;
2. the proxy reads the padded window un-normalised with OpenAI's CLIP mean/std and normalised with
   ImageNet's, cropped to its patch grid (a stride-p convolution drops the rest); its features are the
   last block's output through the final norm, F (C x M, M = H' x W' patches);
3. ``S = f^T f`` with f the per-patch L2-normalised F; ``S <- gamma (S - beta mean(S))`` (the mean over
   the window's M x M entries); entries below 0 are -inf; ``A = softmax(S)`` over each row;
4. CLIP runs as usual up to its last block (its input cropped to its own patch grid); there the values
   ``v = in_proj(ln_1(x))[value part]`` of the patches, resized bilinearly from CLIP's grid to the
   proxy's, are mixed by A (the same weights for every head): ``out_proj(A v)``, with neither residual
   nor FFN; ``ln_post`` and the projection give the dense features, on the proxy's grid;
5. the classifier's scores are resized bilinearly to the padded window and the window cut out.

Read from github.com/mc-lan/ProxyCLIP (e7b767f): ``proxyclip_segmentor.py`` (``forward_feature``,
``forward_slide``, ``compute_padsize``) and ``open_clip/transformer.py`` (``VisionTransformer.custom_attn``).
Their code computes the mean of step 3 over its batch, which is one window; here it is per window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import OPENAI_MEAN, OPENAI_STD, Backbone, centre_padding
from .last_block import qkv
from .maskclip import Decoding, Features, MaskCLIP, Pooling
from .text import TextClassifier


def proxy_attention(feats: Tensor, beta: float, gamma: float) -> Tensor:
    """ProxyCLIP's attention from a proxy's patch features (step 3 of the module's description).

    Args:
        feats: B x C x H x W proxy features.
        beta: the shift, in units of the similarities' mean.
        gamma: the scale after the shift.

    Returns:
        B x M x M attention weights (M = H * W), each row summing to 1.
    """
    f = F.normalize(feats.flatten(2), dim=1)  # B x C x M
    sim = f.transpose(1, 2) @ f
    sim = (sim - sim.mean(dim=(1, 2), keepdim=True) * beta) * gamma
    return sim.masked_fill(sim < 0, float("-inf")).softmax(dim=-1)


@dataclass(frozen=True, eq=False)
class ProxyAttention:
    """CLIP's last block with ProxyCLIP's attention (a ``LastBlock`` built per call, ``last_block.py``).

    Attributes:
        proxy: B x C x H' x W' proxy features of the same windows.
        beta, gamma: the shift and scale of ``proxy_attention``.
    """

    proxy: Tensor
    beta: float
    gamma: float

    @property
    def out_grid(self) -> tuple[int, int]:
        """The grid of the returned tokens: the proxy's."""
        return int(self.proxy.shape[-2]), int(self.proxy.shape[-1])

    def __call__(self, block: nn.Module, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """B x (1 + h*w) x W tokens on CLIP's grid -> B x (1 + H'*W') x W on the proxy's: the class token's
        row is its value through ``out_proj`` (ProxyCLIP drops it; the dense features never read it)."""
        _, _, v = qkv(block, x)
        b, _, c = v.shape
        patches = v[:, 1:].transpose(1, 2).reshape(b, c, *grid)
        if tuple(grid) != self.out_grid:
            patches = F.interpolate(patches, size=self.out_grid, mode="bilinear", align_corners=False)
        weights = proxy_attention(self.proxy, self.beta, self.gamma).to(v.dtype)
        out = torch.cat([v[:, :1], weights @ patches.flatten(2).transpose(1, 2)], dim=1)
        return F.linear(out, block.attn.out_proj.weight, block.attn.out_proj.bias)


class ProxyCLIP(MaskCLIP):
    """Proxy features -> CLIP with the proxy's attention in its last block -> classifier (-> with heads:
    CLIP-DINOiser's pooling and background refinement, ``model.dinoiser``).

    Args:
        backbone: CLIP's frozen image tower (``model.clip.input`` ``floor`` as ProxyCLIP: no padding of its own).
        text: text classifier.
        proxy: the proxy, a frozen ViT (``teachers.FrozenViT``) with ``features(images) -> B x C x H' x W'``.
        decoding: the settings of ``decode``.
        beta, gamma: ``model.proxy.beta``, ``model.proxy.gamma``.
        pad_to: ``model.proxy.pad_to``, the multiple the windows are padded around to.
        heads: CLIP-DINOiser's heads, or None (ProxyCLIP alone).
        pooling: the pooling with the heads' correlations.
    """

    def __init__(self, backbone: Backbone, text: TextClassifier, proxy: nn.Module, decoding: Decoding, *,
                 beta: float, gamma: float, pad_to: int, heads: nn.Module | None = None,
                 pooling: Pooling | None = None) -> None:
        super().__init__(backbone, text, decoding, pooling)
        self.proxy = proxy
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.pad_to = int(pad_to)
        self.heads = heads

    @property
    def has_objectness(self) -> bool:
        return self.heads is not None

    def padded(self, images: Tensor) -> Tensor:
        """B x 3 x H x W in [0, 1] -> centred in the next multiple of ``pad_to``, the padding the backbone's
        mean colour (zero once normalised, as their padding of the normalised window)."""
        (h, w), p = images.shape[-2:], (self.pad_to, self.pad_to)
        left, right, top, bottom = centre_padding((h, w), p)
        if not (left or right or top or bottom):
            return images
        mean = self.backbone.mean.to(images.dtype)
        out = mean.expand(images.shape[0], 3, h + top + bottom, w + left + right).clone()
        out[..., top : top + h, left : left + w] = images
        return out

    def proxy_input(self, padded: Tensor) -> Tensor:
        """The padded windows as the proxy reads them, in [0, 1] before its own (ImageNet) normalisation: CLIP's
        normalised input un-normalised with OpenAI's CLIP mean/std (their ``UnNormalize``), cropped to the
        proxy's patch grid."""
        mean, std = self.backbone.mean.to(padded.dtype), self.backbone.std.to(padded.dtype)
        x = (padded - mean) / std
        x = x * x.new_tensor(OPENAI_STD).view(1, 3, 1, 1) + x.new_tensor(OPENAI_MEAN).view(1, 3, 1, 1)
        (ph, pw), (h, w) = self.proxy.patch_size, x.shape[-2:]
        return x[..., : h - h % ph, : w - w % pw]

    def features(self, images: Tensor, *, keys: bool = False) -> Features:
        """B x 3 x H x W RGB in [0, 1] -> ProxyCLIP's dense features on the proxy's grid (with heads: resized
        to CLIP's grid, where the heads' correlations and objectness are, and those with them)."""
        padded = self.padded(images)
        block = ProxyAttention(self.proxy.features(self.proxy_input(padded)), self.beta, self.gamma)
        out = self.backbone(padded, with_inter=self.heads is not None, with_keys=keys, last_block=block)
        if self.heads is None:
            return Features(out.dense, out.keys)
        corrs, objectness = self.heads(out.inter)
        dense = out.dense
        if dense.shape[-2:] != out.inter.shape[-2:]:
            dense = F.interpolate(dense, size=out.inter.shape[-2:], mode="bilinear", align_corners=False)
        return Features(dense, out.keys, corrs, objectness)

    def to_pixels(self, scores: Tensor, size: tuple[int, int]) -> Tensor:
        """B x C x h x w scores of windows of ``size`` (H, W) -> B x C x H x W: resized bilinearly to the
        padded window, the window cut out (their ``forward_slide``)."""
        (h, w) = int(size[0]), int(size[1])
        left, right, top, bottom = centre_padding((h, w), (self.pad_to, self.pad_to))
        full = F.interpolate(scores, size=(h + top + bottom, w + left + right), mode="bilinear", align_corners=False)
        return full[..., top : top + h, left : left + w]
