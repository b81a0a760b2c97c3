"""CLIP's last residual block, as the training-free dense methods change it.

Every method here runs CLIP's ViT as it is up to the last residual block and changes only that
block; what it returns goes through ``ln_post`` and the projection as in CLIP. The block is a
``LastBlock``: a callable ``(block, x, grid) -> tokens`` on batch-first tokens, so a method is
a few lines and the backbone never changes for it (``CLIPBackbone(last_block=...)``).

``AttentionBlock`` covers the published ones, each an attention map over the block's own
query / key / value projections, with or without the block's residual and FFN:

========  ==========================================================  =============================
attention  weights of token i over tokens j (per head, s = d_head^-1/2)  method
========  ==========================================================  =============================
value      1 if i == j else 0 (the value path)                           MaskCLIP (Zhou et al., 2022)
vanilla    softmax_j(s q_i . k_j)                                        CLIP
csa        softmax_j(s q_i . q_j) + softmax_j(s k_i . k_j)               SCLIP (Wang et al., 2024)
qq         softmax_j(s q_i . q_j)                                        ClearCLIP (Lan et al., 2024)
kk         softmax_j(s k_i . k_j)                                        NACLIP's ablation
naclip     softmax_j(s k_i . k_j + G_ij)                                 NACLIP (Hajimiri et al., 2025)
nonly      softmax_j(G_ij * s * mean |q| |k|)                            NACLIP's ablation
========  ==========================================================  =============================

G is NACLIP's neighbourhood: ``G_ij = exp(-|p_i - p_j|^2 / (2 std^2))`` for patches at grid
positions p_i, p_j, and 0 in the class token's row and column. ``arch``: ``vanilla`` keeps the
block's residual and FFN (``x + attn``, then ``+ mlp(ln_2(.))``); ``reduced`` returns the
attention output alone (NACLIP's "reduced" architecture, ClearCLIP's removed residual and FFN).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ARCHS, ATTENTIONS

__all__ = ["ARCHS", "ATTENTIONS", "AttentionBlock", "LastBlock", "VALUE_PATH", "neighbourhood", "qkv"]

GAUSSIAN = ("naclip", "nonly")  # the attentions that read model.last_block.gaussian_std


class LastBlock(Protocol):
    """The computation of CLIP's last residual block (``CLIPBackbone(last_block=...)``).

    Args:
        block: the open_clip residual block (``ln_1``, ``attn`` with ``in_proj_weight`` /
            ``out_proj``, ``ln_2``, ``mlp``).
        x: B x (1 + h*w) x W batch-first tokens entering it (class token first).
        grid: (h, w), the patch grid of the tokens.

    Returns:
        B x (1 + h*w) x W tokens, which ``ln_post`` and the projection turn into dense features; a
        block whose tokens are on another grid (ProxyCLIP's, on its proxy's) says so in ``out_grid``
        (h', w'), and returns B x (1 + h'*w') x W.
    """

    def __call__(self, block: nn.Module, x: Tensor, grid: tuple[int, int]) -> Tensor: ...


_IDENTITY = nn.Identity()


def layer_scale(block: nn.Module, i: int) -> nn.Module:
    """The block's layer-scale ``ls_i`` (identity for CLIP ViT-B/16 and older open_clip)."""
    ls = getattr(block, f"ls_{i}", None)
    return _IDENTITY if ls is None else ls


def qkv(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Query, key and value projections of ``ln_1(x)`` (before ``out_proj``), each ... x W."""
    attn = block.attn
    return F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)


def neighbourhood(grid: tuple[int, int], std: float, *, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """NACLIP's Gaussian neighbourhood over the tokens of a ``grid`` (class token first):
    (1 + h*w) x (1 + h*w), ``exp(-|p_i - p_j|^2 / (2 std^2))`` between patches, 0 in the class
    token's row and column."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], dim=1)  # N x 2
    d2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    out = torch.zeros(h * w + 1, h * w + 1, dtype=torch.float64)
    out[1:, 1:] = torch.exp(-d2 / (2 * std**2))
    return out.to(device=device, dtype=dtype)


@dataclass(frozen=True)
class AttentionBlock:
    """The last block with another attention map and optionally without its residual and FFN.

    Attributes:
        attention: ``ATTENTIONS`` (see the module's table).
        arch: ``vanilla`` (residual and FFN kept) or ``reduced`` (attention output only).
        gaussian_std: std of NACLIP's neighbourhood, in patches (``naclip``, ``nonly``).
    """

    attention: str = "value"
    arch: str = "vanilla"
    gaussian_std: float = 5.0

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention {self.attention!r} not in {ATTENTIONS}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r} not in {ARCHS}")
        if self.attention in GAUSSIAN and not self.gaussian_std > 0:
            raise ValueError(f"gaussian_std must be positive, got {self.gaussian_std}")

    def __call__(self, block: nn.Module, x: Tensor, grid: tuple[int, int]) -> Tensor:
        attn = block.attn
        q, k, v = qkv(block, x)
        if self.attention == "value":
            out = v
        else:
            b, t, c = x.shape
            heads = attn.num_heads
            q, k, v = (z.reshape(b, t, heads, c // heads).transpose(1, 2) for z in (q, k, v))  # B x H x T x d
            out = (self.weights(q, k, grid) @ v).transpose(1, 2).reshape(b, t, c)
        out = F.linear(out, attn.out_proj.weight, attn.out_proj.bias)
        if self.arch == "reduced":
            return out
        x = x + layer_scale(block, 1)(out)
        return x + layer_scale(block, 2)(block.mlp(block.ln_2(x)))

    def weights(self, q: Tensor, k: Tensor, grid: tuple[int, int]) -> Tensor:
        """B x H x T x T attention weights from B x H x T x d queries and keys."""
        scale = q.shape[-1] ** -0.5
        a = self.attention
        if a == "vanilla":
            return (scale * q @ k.transpose(-1, -2)).softmax(dim=-1)
        if a == "csa":
            return ((scale * q @ q.transpose(-1, -2)).softmax(dim=-1)
                    + (scale * k @ k.transpose(-1, -2)).softmax(dim=-1))
        if a == "qq":
            return (scale * q @ q.transpose(-1, -2)).softmax(dim=-1)
        if a == "kk":
            return (scale * k @ k.transpose(-1, -2)).softmax(dim=-1)
        g = _cached_neighbourhood(tuple(grid), float(self.gaussian_std), q.device, q.dtype)
        if a == "naclip":
            return (scale * k @ k.transpose(-1, -2) + g).softmax(dim=-1)
        # nonly: the neighbourhood alone, scaled by the mean of |q_i| |k_j| over heads and token pairs of the
        # image (NACLIP's einsum(...).mean() over its batch of one image)
        qn, kn = q.norm(dim=-1), k.norm(dim=-1)  # B x H x T
        level = scale * (qn.mean(dim=-1) * kn.mean(dim=-1)).mean(dim=-1)  # B
        return (g * level[:, None, None, None]).softmax(dim=-1)


_NEIGHBOURHOODS: OrderedDict[tuple, Tensor] = OrderedDict()


def _cached_neighbourhood(grid: tuple[int, int], std: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``neighbourhood`` cached per grid, std, device and dtype (a few grids per evaluation)."""
    key = (grid, std, str(device), dtype)
    if key not in _NEIGHBOURHOODS:
        while len(_NEIGHBOURHOODS) >= 8:
            _NEIGHBOURHOODS.popitem(last=False)
        _NEIGHBOURHOODS[key] = neighbourhood(grid, std, device=device, dtype=dtype)
    _NEIGHBOURHOODS.move_to_end(key)
    return _NEIGHBOURHOODS[key]


VALUE_PATH = AttentionBlock()  # MaskCLIP's: the backbone's default


def describe(block: LastBlock) -> str:
    """A short name for logs (``csa/vanilla``)."""
    if isinstance(block, AttentionBlock):
        std = f", std {block.gaussian_std:g}" if block.attention in GAUSSIAN else ""
        return f"{block.attention}/{block.arch}{std}"
    return getattr(block, "__name__", type(block).__name__)
