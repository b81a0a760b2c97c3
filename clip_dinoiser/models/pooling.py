"""Guided pooling of dense CLIP features with a patch-to-patch correlation map (paper Eq. 1)."""

from __future__ import annotations

from torch import Tensor


def threshold_correlations(corrs: Tensor, gamma: float | None) -> Tensor:
    """Zero the entries below ``gamma``; ``gamma`` of None or 0 keeps the map as is."""
    if not gamma:
        return corrs
    return corrs.masked_fill(corrs < gamma, 0.0)


def guided_pooling(feats: Tensor, corrs: Tensor, gamma: float | None, eps: float = 1e-6) -> Tensor:
    """Refine every patch feature as the correlation-weighted mean of all patch features.

    ``out[:, n] = sum_m C[n, m] f[:, m] / (sum_m C[n, m] + eps)`` with C thresholded at ``gamma``.

    Args:
        feats: B x D x h x w dense features.
        corrs: B x N x N correlations, N = h * w, row n holding patch n's weights.
        gamma: threshold below which correlations are set to 0.

    Returns:
        B x D x h x w refined features (in the dtype of ``feats``/``corrs`` promotion).
    """
    b, d, h, w = feats.shape
    if corrs.shape != (b, h * w, h * w):
        raise ValueError(f"correlations of shape {tuple(corrs.shape)} do not fit features {tuple(feats.shape)}")
    corrs = threshold_correlations(corrs, gamma)
    pooled = feats.flatten(2).to(corrs.dtype) @ corrs.transpose(1, 2)  # B x D x N
    pooled = pooled / (corrs.sum(dim=-1).unsqueeze(1) + eps)
    return pooled.view(b, d, h, w)
