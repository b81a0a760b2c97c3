"""PAMR: pixel-adaptive mask refinement (Araslanov and Roth, "Single-Stage Semantic Segmentation
from Image Labels", CVPR 2020, Sec. 3.3), the post-processing SCLIP and NACLIP apply to the
window-averaged scores at the image's size.

Each pixel i gets affinities to its 8 neighbours j at every dilation d (replicate padding at the
border), from the image I (C channels):

    k(i, j) = mean_c( -|I_c(i) - I_c(j)| / (1e-8 + 0.1 * sigma_c(i)) ),   a(i, .) = softmax_j k(i, j)

sigma_c(i) being the standard deviation (unbiased) of channel c over the 3 x 3 neighbourhoods of
i at every dilation together (the centre once per dilation). Each step replaces the scores of a
pixel by the affinity-weighted sum of its neighbours' scores, ``s(i) <- sum_j a(i, j) s(j)``,
``steps`` times. The steps are linear in the scores, channel by channel.

Written from the definition: the neighbours are shifted views, so memory is a few copies of the
scores (the authors' module materialises all neighbours of every channel at once, 8 x dilations
copies, and NACLIP skips PAMR where that runs out of memory).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# the 8 neighbours of a pixel: (dy, dx), row by row, the centre left out
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _shifted(padded: Tensor, d: int, dy: int, dx: int, size: tuple[int, int]) -> Tensor:
    """The values at (y + dy * d, x + dx * d) of a map padded by ``d`` on every side."""
    h, w = size
    return padded[..., d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w]


def pamr_affinities(image: Tensor, dilations: Sequence[int]) -> Tensor:
    """B x P x H x W affinities (softmax over the P = 8 x len(dilations) neighbours) of a
    B x C x H x W image."""
    size = tuple(image.shape[-2:])
    pads = [F.pad(image, [d] * 4, mode="replicate") for d in dilations]
    window = torch.stack([_shifted(p, d, dy, dx, size) for p, d in zip(pads, dilations)
                          for dy in (-1, 0, 1) for dx in (-1, 0, 1)], dim=2)  # B x C x 9n x H x W
    sigma = window.std(dim=2)  # B x C x H x W, unbiased, over every dilation's 3 x 3 window
    scale = 1e-8 + 0.1 * sigma
    logits = [(-(image - _shifted(p, d, dy, dx, size)).abs() / scale).mean(dim=1)
              for p, d in zip(pads, dilations) for dy, dx in NEIGHBOURS]
    return torch.stack(logits, dim=1).softmax(dim=1)


def pamr(image: Tensor, scores: Tensor, steps: int, dilations: Sequence[int] = (8, 16)) -> Tensor:
    """Refine B x K x H x W ``scores`` with the B x C x H x W ``image`` (same size) in ``steps``
    PAMR steps over neighbours at ``dilations`` pixels. fp32."""
    if steps <= 0:
        return scores
    if image.shape[-2:] != scores.shape[-2:]:
        raise ValueError(f"PAMR: image {tuple(image.shape[-2:])} and scores {tuple(scores.shape[-2:])} differ in size")
    size = tuple(scores.shape[-2:])
    aff = pamr_affinities(image.float(), dilations)  # B x P x H x W
    mask = scores.float()
    for _ in range(steps):
        pads = {d: F.pad(mask, [d] * 4, mode="replicate") for d in dilations}
        out = torch.zeros_like(mask)
        n = 0
        for d in dilations:
            for dy, dx in NEIGHBOURS:
                out += _shifted(pads[d], d, dy, dx, size) * aff[:, n : n + 1]
                n += 1
        mask = out
    return mask
