"""Frozen DINO ViTs (timm) with an explicit forward to the last attention layer's q/k/v."""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..download import hub_offline_if_unreachable
from ..errors import UserError
from ..files import check_local_file
from ..ops import pad_to_multiple
from ..readers import read_weights, state_dict_of, state_mismatch
from ..weights import local_or_value, timm_weight

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_timm_vit(arch: str, pretrained: str | None, key: str = "pretrained", **kwargs) -> nn.Module:
    """A timm ViT from a pretrained name (``vit_base_patch16_224.dino``) or a local weights file.

    Args:
        arch: timm architecture, used when ``pretrained`` is a file or empty
            (``vit_base_patch16_224``).
        pretrained: timm ``name.tag`` to download (its local copy ``<name.tag>.safetensors`` in
            the weights folder is used when there is one, see ``weights.py``), a local state-dict
            file (timm or original DINO key names, which coincide), or None / empty for random weights.
        key: the config key of ``pretrained``, for error messages.
        **kwargs: timm model overrides (``depth``, ``embed_dim``, ... for tests).
    """
    import timm

    check_local_file(pretrained, "teacher weights", key)
    pretrained = local_or_value(timm_weight(pretrained, key, "teacher weights"))
    if pretrained and os.path.isfile(pretrained):
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
        load_vit_weights(model, pretrained, arch, key)
    elif pretrained:
        try:
            with hub_offline_if_unreachable():
                model = timm.create_model(pretrained, pretrained=True, num_classes=0, **kwargs)
        except Exception as e:  # offline machine, unknown tag
            raise UserError(f"cannot load teacher '{pretrained}' from timm: {str(e).splitlines()[0]} "
                            f"(offline? pass a local weights file as {key})") from e
    else:
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    return model.eval().requires_grad_(False)


def load_vit_weights(model: nn.Module, path: str, arch: str, key: str) -> None:
    """A state-dict file (timm or original DINO key names, which coincide; ``module.`` /
    ``backbone.`` prefixes and the classifier head dropped) into ``model``: every key present,
    every shape equal, or a one-line error naming the file."""
    state = state_dict_of(read_weights(path, "teacher weights", key))
    if state is None:
        raise UserError(f"teacher weights {path} ({key}) are not a state dict of tensors")
    state = {k: v for k, v in state.items() if not k.startswith("head")}
    expected = model.state_dict()
    missing, unexpected, wrong = state_mismatch(expected, state)
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong]
    if missing or unexpected or shapes:
        found = "; ".join(p for p in (f"missing {missing[:3]}" if missing else "",
                                      f"unexpected {unexpected[:3]}" if unexpected else "",
                                      f"shapes {shapes[:3]}" if shapes else "") if p)
        raise UserError(f"teacher weights {path} ({key}) do not fit {arch}: {found}")
    model.load_state_dict(state)


def dino_pos_embed(pos_embed: Tensor, grid: tuple[int, int], num_prefix: int = 1) -> Tensor:
    """DINO's ``interpolate_pos_encoding``: bicubic with scale factors (g + 0.1) / sqrt(N).

    The +0.1 offset (DINO, facebookresearch/dino#8) makes the output size round correctly;
    unchanged at the native square grid. ``pos_embed`` is 1 x (num_prefix + N) x C, its first
    ``num_prefix`` entries (class / register tokens) kept as they are.
    """
    n = pos_embed.shape[1] - num_prefix
    side = int(math.sqrt(n))
    if grid[0] * grid[1] == n and grid[0] == grid[1]:
        return pos_embed
    patch = pos_embed[:, num_prefix:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch.float(), scale_factor=((grid[0] + 0.1) / side, (grid[1] + 0.1) / side),
                          mode="bicubic")
    if patch.shape[-2:] != grid:
        raise RuntimeError(f"positional embedding resized to {tuple(patch.shape[-2:])}, expected {grid}")
    patch = patch.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])
    return torch.cat([pos_embed[:, :num_prefix], patch], dim=1)


class FrozenViT(nn.Module):
    """A frozen timm ViT returning the last attention layer's q, k, v for every patch.

    Input: B x 3 x H x W RGB in [0, 1]; zero-padded to the patch size, then ImageNet-normalised.
    Prefix tokens (class and register tokens, timm's ``num_prefix_tokens``) are dropped from
    the outputs.
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit.eval().requires_grad_(False)
        ps = vit.patch_embed.patch_size
        self.patch_size = (ps, ps) if isinstance(ps, int) else tuple(ps)
        self.dim = vit.embed_dim
        self.num_prefix = int(getattr(vit, "num_prefix_tokens", 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FrozenViT:
        return super().train(False)

    def grid(self, images: Tensor) -> tuple[int, int]:
        ph, pw = self.patch_size
        return -(-images.shape[-2] // ph), -(-images.shape[-1] // pw)

    def tokens(self, images: Tensor) -> Tensor:
        """The input of the first block: B x (prefix + N) x C, as timm's ``_pos_embed`` builds
        it (class and register tokens, ``no_embed_class``), with DINO's resize of the positional
        embedding to the image's grid."""
        v = self.vit
        x = pad_to_multiple(images, self.patch_size)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        x = v.patch_embed.proj(x.to(v.patch_embed.proj.weight.dtype))
        b, _, gh, gw = x.shape
        x = v.patch_embed.norm(x.flatten(2).transpose(1, 2))
        prefix = [t.expand(b, -1, -1).to(x.dtype) for t in (v.cls_token, getattr(v, "reg_token", None))
                  if t is not None]
        no_embed_class = bool(getattr(v, "no_embed_class", False))
        pos = dino_pos_embed(v.pos_embed, (gh, gw), 0 if no_embed_class else self.num_prefix).to(x.dtype)
        if no_embed_class:  # the prefix tokens get no positional embedding
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos
        return v.norm_pre(v.patch_drop(v.pos_drop(x)))

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """The last block's output through the final norm, B x C x h x w on the patch grid (prefix tokens
        dropped): DINO's ``get_intermediate_layers(x, n=1)[0]``, the features ProxyCLIP's proxy gives."""
        x = self.tokens(images)
        for block in self.vit.blocks:
            x = block(x)
        x = self.vit.norm(x)[:, self.num_prefix :]
        return x.transpose(1, 2).reshape(x.shape[0], -1, *self.grid(images))

    @torch.no_grad()
    def last_qkv(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(q, k, v) of the last block's attention, each B x N x C (prefix tokens dropped)."""
        x = self.tokens(images)
        for block in self.vit.blocks[:-1]:
            x = block(x)
        last = self.vit.blocks[-1]
        q, k, val = last.attn.qkv(last.norm1(x)).chunk(3, dim=-1)
        p = self.num_prefix
        return q[:, p:], k[:, p:], val[:, p:]
