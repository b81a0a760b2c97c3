"""Post-hoc refinements of class probabilities: MaskCLIP's PD and KS, CLIP-DINOiser's background."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def prompt_denoising(logits: Tensor, probs: Tensor, thresh: float) -> Tensor:
    """MaskCLIP prompt denoising: drop classes whose max probability over the image is below ``thresh``.

    A dropped class gets a cosine of -1 before the temperature (MaskCLIP writes -100 into the
    cosine map), so its probability after the softmax is 0 to fp32 precision.

    Args:
        logits: B x K x h x w temperature-scaled cosine scores.
        probs: their softmax over classes.
    """
    dropped = probs.flatten(2).amax(dim=2) < thresh  # B x K
    return logits.masked_fill(dropped[:, :, None, None], -1e4)


def key_smoothing(probs: Tensor, keys: Tensor, thresh: float) -> Tensor:
    """MaskCLIP key smoothing: a patch whose max probability is below ``thresh`` gets the
    key-similarity-weighted sum of all patches' probabilities.

    As MaskCLIP's code runs it (``MaskClipHead.refine_output``): ``F.normalize(k, p=2)`` on the
    B x N x C keys normalises along dimension 1, i.e. each key *channel* over the patches (not each
    patch's key over the channels, as the paper's "cosine similarity" would read); the weights
    ``k k^T`` are then used as they are.

    Args:
        probs: B x K x h x w class probabilities.
        keys: B x N x C keys (N = h * w) as ``Backbone`` gives them.
    """
    b, k, h, w = probs.shape
    p = probs.flatten(2).transpose(1, 2)  # B x N x K
    keys = F.normalize(keys.float(), dim=1)
    smoothed = (keys @ keys.transpose(1, 2)) @ p
    uncertain = p.amax(dim=-1, keepdim=True) < thresh
    return torch.where(uncertain, smoothed, p).transpose(1, 2).reshape(b, k, h, w)


def background_refinement(probs: Tensor, objectness_logits: Tensor, bg_index: int, delta: float) -> Tensor:
    """Give the background class probability 1 where the patch is not foreground and the
    classifier is unsure (max probability below ``delta``), per image.

    Args:
        probs: B x K x h x w class probabilities.
        objectness_logits: B x 1 x h' x w' foreground logits (resized to h x w bilinearly).
        bg_index: index of the background class.
        delta: confidence threshold (0.99 in the paper).
    """
    if objectness_logits.shape[-2:] != probs.shape[-2:]:
        objectness_logits = F.interpolate(objectness_logits, probs.shape[-2:], mode="bilinear", align_corners=False)
    foreground = torch.sigmoid(objectness_logits.float())[:, 0] > 0.5  # B x h x w
    uncertain = probs.amax(dim=1) < delta
    out = probs.clone()
    out[:, bg_index] = out[:, bg_index].masked_fill(uncertain & ~foreground, 1.0)
    return out


def low_confidence_to_first(probs: Tensor, thresh: float) -> Tensor:
    """A pixel whose highest probability is below ``thresh`` becomes class 0 (probability 1 there,
    0 elsewhere): the background of SCLIP / NACLIP / ClearCLIP's ``prob_thd``, whose class 0 is the
    background (or its synonyms).

    Args:
        probs: K x H x W (or B x K x H x W) class probabilities.
    """
    dim = probs.dim() - 3
    low = probs.amax(dim=dim, keepdim=True) < thresh
    first = torch.zeros_like(probs)
    first.narrow(dim, 0, 1).fill_(1.0)
    return torch.where(low, first, probs)


def area_threshold(probs: Tensor, thresh: float) -> Tensor:
    """Drop the small classes (SCLIP's ``area_thd``): a class other than class 0 whose predicted
    area (argmax pixels) is at most ``thresh`` times the pixels predicted as any class but 0 gets
    probability 0 everywhere.

    Args:
        probs: K x H x W class probabilities of one image.
    """
    k = probs.shape[0]
    area = torch.bincount(probs.argmax(dim=0).flatten(), minlength=k)[1:].to(probs.dtype)
    keep = (area > thresh * area.sum()).to(probs.dtype)
    return torch.cat([probs[:1], probs[1:] * keep[:, None, None]])
