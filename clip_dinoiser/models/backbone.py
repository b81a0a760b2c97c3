"""Frozen CLIP image tower with an explicit MaskCLIP forward pass.

One call returns everything the method reads from CLIP, without forward hooks and
without writing into the pretrained parameters:

* ``dense``: MaskCLIP value-path features after ``ln_post`` and the visual projection
  (B x D x h x w, D = 512 for ViT-B/16);
* ``inter``: the output of ``ln_2`` inside residual block ``feats_idx`` with the class
  token dropped (B x W x h x w, W = 768 for ViT-B/16), the input of the CLIP-DINOiser heads;
* ``keys``: the key features of the last attention layer through its output projection
  (B x h*w x W), for MaskCLIP key smoothing.

The value path follows MaskCLIP (Zhou et al., ECCV 2022, Sec. 3.2): in the last block the
query/key attention is replaced by the identity on the value projection.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import INPUTS
from ..download import hub_offline_if_unreachable
from ..errors import UserError
from ..files import check_local_file
from ..ops import pad_to_multiple
from ..readers import read_json, read_weights
from ..values import check_choice
from ..weights import clip_weight, local_or_value

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# mmseg's img_norm_cfg (123.675, 116.28, 103.53) / (58.395, 57.12, 57.375) on 0..255, over 255: MaskCLIP's configs
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# model.clip.input: how [0, 1] RGB images enter the tower
#   clip:  zero-padded (black) to the patch size, then the tower's own mean/std (CLIP-DINOiser's reference);
#   mmseg: ImageNet mean/std (mmseg's data preprocessing, MaskCLIP's configs), then zero-padded in the
#          normalised space (mmseg's PatchEmbed, padding='corner'), i.e. with the mean colour.


def input_stats(visual: nn.Module, mode: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of ``model.clip.input``: the tower's own for ``clip``, ImageNet's for ``mmseg``."""
    if mode == "mmseg":
        return IMAGENET_MEAN, IMAGENET_STD
    check_choice(mode, INPUTS, "model.clip.input")
    mean = getattr(visual, "image_mean", None) or OPENAI_MEAN
    std = getattr(visual, "image_std", None) or OPENAI_STD
    return tuple(mean), tuple(std)


def prepare_input(images: Tensor, mean: Tensor, std: Tensor, patch_size: tuple[int, int], mode: str) -> Tensor:
    """B x 3 x H x W RGB in [0, 1] -> the tower's input under ``model.clip.input`` = ``mode``
    (padded right/bottom to a multiple of ``patch_size``)."""
    if mode == "mmseg":
        return pad_to_multiple((images - mean.to(images.dtype)) / std.to(images.dtype), patch_size)
    x = pad_to_multiple(images, patch_size)
    return (x - mean.to(x.dtype)) / std.to(x.dtype)


@dataclass
class BackboneOutput:
    """What one CLIP forward returns.

    Attributes:
        dense: MaskCLIP features, B x D x h x w (projected to the text space, not normalised);
            None when not asked for.
        inter: ``ln_2`` output of block ``feats_idx``, B x W x h x w; None when not asked for.
        keys: last-layer attention keys, B x (h*w) x W; None when not asked for.
    """

    dense: Tensor | None
    inter: Tensor | None = None
    keys: Tensor | None = None


class Backbone(Protocol):
    """What a segmenter needs from its image tower (``model.clip.backbone`` names the factory).

    Attributes:
        patch_size: (h, w) pixels per patch; outputs are at the grid ceil(H / h) x ceil(W / w).
        width: channels of ``inter`` (the heads' input).
        out_dim: channels of ``dense`` (CLIP's joint space, as the text embeddings).
    """

    patch_size: tuple[int, int]
    width: int
    out_dim: int

    def __call__(self, images: Tensor, *, with_inter: bool = True, with_keys: bool = False,
                 with_dense: bool = True) -> BackboneOutput: ...


def register_model_config(name: str) -> str:
    """An open_clip model-config JSON path is registered under its file stem, which is returned;
    any other name is returned unchanged."""
    if not name.endswith(".json"):
        return name
    import open_clip

    config = read_json(name, "CLIP model config")
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(config):
        raise UserError(f"CLIP model config {name} is not an open_clip model config (embed_dim, vision_cfg, text_cfg)")
    open_clip.add_model_config(name)
    return os.path.splitext(os.path.basename(name))[0]


def is_resnet_config(name: str) -> bool:
    """Whether the open_clip architecture ``name`` (registered) has a ResNet image tower: its
    ``vision_cfg.layers`` lists the blocks per stage (a ViT's is one number)."""
    import open_clip

    config = open_clip.get_model_config(name) or {}
    return isinstance((config.get("vision_cfg") or {}).get("layers"), (list, tuple))


def load_open_clip(name: str, pretrained: str | None, key: str = "model.clip.pretrained") -> nn.Module:
    """Build an open_clip model from an architecture name and a pretrained tag or local file.

    Args:
        name: open_clip architecture (``ViT-B-16``, ``ViT-L-14``, ...) or the path of an
            open_clip model-config JSON file (custom architectures).
        pretrained: a pretrained tag (``laion2b_s34b_b88k``, ``openai``; its local copy
            ``<name>.<tag>.safetensors`` in the weights folder is used when there is one, see
            ``weights.py``), a local checkpoint path (offline clusters), or None / empty for
            random weights.
        key: the config key of ``pretrained``, for messages.
    """
    import open_clip  # heavy: imported on first use, never at package import

    name = register_model_config(name)
    if name not in open_clip.list_models():
        raise UserError(f"unknown open_clip model '{name}' (see open_clip.list_models())")
    check_local_file(pretrained, "CLIP checkpoint", key)
    quick_gelu = trained_with_quick_gelu(name, pretrained)  # before the tag becomes its local copy's path
    pretrained = local_or_value(clip_weight(name, pretrained, key))
    if pretrained and os.path.isfile(pretrained):
        model = open_clip_from_state_dict(name, pretrained, key, quick_gelu)
        if model is not None:
            return model.eval()
        try:  # a wrapped or converted checkpoint: open_clip's own loader
            return open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=quick_gelu).eval()
        except Exception as e:  # keys or shapes of another architecture
            raise UserError(f"CLIP checkpoint {pretrained} does not fit {name} ({key}): "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    tag_cfg = get_pretrained_cfg(name, pretrained) if pretrained and not os.path.isfile(pretrained) else {}
    try:
        with hub_offline_if_unreachable():
            if tag_cfg:
                download_pretrained(tag_cfg)  # fetched, or found in the cache, before the model is built
            model = open_clip.create_model(name, pretrained=pretrained or None, force_quick_gelu=quick_gelu)
    except (RuntimeError, OSError) as e:  # download failures (offline machine), unknown tags
        raise UserError(
            f"cannot load CLIP weights '{pretrained}' for {name}: {str(e).splitlines()[0] if str(e) else e!r} "
            f"(offline? pass a local checkpoint file as {key})"
        ) from e
    return model.eval()


def trained_with_quick_gelu(name: str, pretrained: str | None) -> bool:
    """Whether the open_clip tag ``pretrained`` of ``name`` was trained with QuickGELU (OpenAI's
    weights: ``RN50`` / ``openai``, ``ViT-B-16`` / ``openai``, ...). open_clip >= 2.26 builds the
    plain config's exact GELU for them and only warns; its ``*-quickgelu`` configs, or this flag,
    give the activation they were trained with (text and image towers)."""
    if not pretrained or os.path.isfile(pretrained):
        return False
    from open_clip.pretrained import get_pretrained_cfg

    return bool((get_pretrained_cfg(name, pretrained) or {}).get("quick_gelu", False))


def open_clip_from_state_dict(name: str, path: str, key: str = "model.clip.pretrained",
                               quick_gelu: bool = False) -> nn.Module | None:
    """The open_clip model ``name`` with the tensors of a plain state-dict file, built without
    a random initialisation (on the meta device; the weights are assigned, not copied).

    Returns None where the file needs open_clip's own loader (a wrapped or converted
    checkpoint, other key names or shapes), which then reads it.
    """
    import open_clip

    state = read_weights(path, "CLIP checkpoint", key)  # garbage files: one line
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        return None
    # the hub's files are often fp16 (open_clip_model.safetensors); assigned as they are, the model would be too
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    logging.disable(logging.WARNING)  # open_clip warns that no pretrained weights were loaded: they are, below
    try:
        with torch.device("meta"):
            model = open_clip.create_model(name, device="meta", force_quick_gelu=quick_gelu)
    finally:
        logging.disable(logging.NOTSET)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError:
        return None
    mask = getattr(model, "attn_mask", None)
    if isinstance(mask, Tensor) and mask.is_meta:  # the text tower's causal mask is not saved: rebuild it
        model.attn_mask = torch.full(mask.shape, float("-inf"), dtype=mask.dtype).triu_(1)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return None
    return model


def interpolate_pos_embed(pos_embed: Tensor, grid: tuple[int, int], native: tuple[int, int]) -> Tensor:
    """Resize a (1 + H*W) x C positional embedding to ``grid`` bicubically (align_corners=False).

    The class-token entry is kept. At the native grid the embedding is returned unchanged.
    """
    if tuple(grid) == tuple(native):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    c = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, native[0], native[1], c).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=grid, mode="bicubic", align_corners=False)
    patch_pos = patch_pos.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(-1, c)
    return torch.cat([cls_pos, patch_pos], dim=0)


MMSEG_LN_EPS = 1e-6  # MaskCLIP's configs/_base_/models/maskclip_vit16.py: norm_cfg=dict(type='LN', eps=1e-6)


def as_mmseg_vit(visual: nn.Module) -> nn.Module:
    """The ViT tower as MaskCLIP's mmseg port runs CLIP's weights (``model.clip.mmseg_vit``): every
    LayerNorm with eps 1e-6 and the MLPs' activation exact GELU (``act_cfg=dict(type='GELU')``),
    where open_clip runs OpenAI's weights with eps 1e-5 and QuickGELU, as they were trained. The
    weights are untouched; only these two settings of the modules change."""
    for module in visual.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = MMSEG_LN_EPS
    for block in visual.transformer.resblocks:
        mlp = block.mlp
        for name, child in mlp.named_children():
            if not isinstance(child, nn.Linear | nn.Dropout | nn.Identity | nn.LayerNorm):
                setattr(mlp, name, nn.GELU())  # the activation (QuickGELU or GELU) -> exact GELU
    return visual


def sequence_first(transformer: nn.Module) -> bool:
    """Whether the residual blocks of an open_clip ``Transformer`` take tokens sequence-first
    (L x B x C) rather than batch-first (B x L x C), read from the modules themselves.

    The first block's attention decides: ``nn.MultiheadAttention.batch_first`` (every open_clip
    version), else the ``batch_first`` of open_clip's own ``Attention`` (2.26 to 2.32), else the
    transformer's ``batch_first`` (2.26 on; 3.x's ``Attention`` is always batch-first and has no
    flag). Without any flag the transformer is from open_clip < 2.26, whose ``VisionTransformer``
    and ``CLIP.encode_text`` permuted NLD -> LND before the blocks: sequence-first. (Reading only
    the transformer's flag, defaulting to batch-first, ran 2.24's blocks on the wrong axes.)
    """
    attn = getattr(transformer.resblocks[0], "attn", None)
    if isinstance(attn, nn.MultiheadAttention):
        return not attn.batch_first
    flag = getattr(attn, "batch_first", getattr(transformer, "batch_first", False))
    return not flag


def _qkv(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Query, key and value projections of ``ln_1(x)`` (before out_proj), each ... x W."""
    attn = block.attn
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    return qkv.chunk(3, dim=-1)


class CLIPBackbone(nn.Module):
    """Frozen open_clip ViT image tower exposing MaskCLIP features.

    Args:
        visual: an open_clip ``VisionTransformer`` (``model.visual``).
        feats_idx: residual block whose ``ln_2`` output feeds the heads (negative counts from the
            end; -3 in the paper).
        mean, std: CLIP normalisation applied to [0, 1] RGB input.
        input: ``model.clip.input`` (``INPUTS``): pad before (``clip``) or after (``mmseg``) normalising.
    """

    def __init__(
        self,
        visual: nn.Module,
        *,
        feats_idx: int,
        mean: tuple[float, float, float] = OPENAI_MEAN,
        std: tuple[float, float, float] = OPENAI_STD,
        input: str = "clip",
    ) -> None:
        super().__init__()
        self.input = check_choice(input, INPUTS, "model.clip.input")
        for attr in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post"):
            if not hasattr(visual, attr):
                raise TypeError(f"CLIP image tower has no '{attr}': only open_clip ViTs are supported")
        if getattr(visual, "attn_pool", None) is not None:
            raise TypeError("CLIP image towers with attentional pooling are not supported by MaskCLIP")
        self.visual = visual.eval().requires_grad_(False)
        blocks = visual.transformer.resblocks
        n = len(blocks)
        if not -n <= feats_idx < n - 1 and feats_idx != -1:
            raise UserError(f"model.feats_idx={feats_idx} out of range for a {n}-block ViT")
        self.feats_idx = feats_idx % n
        if self.feats_idx == n - 1:
            raise UserError("model.feats_idx must not be the last block (it is replaced by the value path)")
        self.patch_size = _pair(visual.conv1.kernel_size)
        self.width = visual.conv1.out_channels
        self.out_dim = visual.proj.shape[1] if visual.proj is not None else self.width
        n_tokens = visual.positional_embedding.shape[0] - 1
        side = int(round(n_tokens**0.5))
        self.native_grid = getattr(visual, "grid_size", (side, side))
        self._pos_cache: dict[tuple, Tensor] = {}
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_open_clip(cls, model: nn.Module, *, feats_idx: int, input: str = "clip") -> CLIPBackbone:
        mean, std = input_stats(model.visual, input)
        return cls(model.visual, feats_idx=feats_idx, mean=mean, std=std, input=input)

    def train(self, mode: bool = True) -> CLIPBackbone:
        # The tower is frozen: it stays in eval mode whatever the parent module does.
        return super().train(False)


    def _patchify(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``conv1`` (kernel = stride = patch) as one matrix product over the patches: B x N x W.

        Same result as the convolution up to float rounding, and several times faster in bf16,
        where cuDNN picks an implicit-GEMM kernel for this shape (measured on an H100).
        """
        conv = self.visual.conv1
        (ph, pw), b = self.patch_size, x.shape[0]
        h, w = x.shape[-2] // ph, x.shape[-1] // pw
        patches = x.reshape(b, 3, h, ph, w, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, 3 * ph * pw)
        weight = conv.weight.reshape(conv.out_channels, -1)
        return F.linear(patches.to(weight.dtype), weight, conv.bias), (h, w)

    def _pos_embed(self, grid: tuple[int, int]) -> Tensor:
        """The positional embedding resized to ``grid``, cached per grid (a bicubic resize of a
        768 x 14 x 14 map costs ~3 ms on an H100, as much as a tenth of a window's forward).
        The cache is keyed on the parameter's version, so changed weights are never served stale."""
        pos = self.visual.positional_embedding
        key = (tuple(grid), pos.device, pos.dtype, pos._version, pos.data_ptr())
        if key not in self._pos_cache:
            if len(self._pos_cache) >= 16:
                self._pos_cache.clear()
            self._pos_cache[key] = interpolate_pos_embed(pos, grid, self.native_grid)
        return self._pos_cache[key]

    def forward(
        self, images: Tensor, *, with_inter: bool = True, with_keys: bool = False, with_dense: bool = True
    ) -> BackboneOutput:
        """Run the tower once.

        Args:
            images: B x 3 x H x W RGB in [0, 1], any H, W (zero-padded to the patch size).
            with_inter: also return the ``ln_2`` features of block ``feats_idx``.
            with_keys: also return the last layer's attention keys as MaskCLIP's key smoothing reads
                them: through the attention's output projection (``MaskClipHead`` on its ViT).
            with_dense: compute the MaskCLIP features (False: stop after block ``feats_idx``;
                ``dense`` is then None).
        """
        v = self.visual
        x = prepare_input(images, self.mean, self.std, self.patch_size, self.input)
        x, (h, w) = self._patchify(x)
        b, _, c = x.shape
        cls_tok = v.class_embedding.to(x.dtype).view(1, 1, c).expand(b, -1, -1)
        x = torch.cat([cls_tok, x], dim=1)
        x = x + self._pos_embed((h, w)).to(x.dtype)
        x = v.patch_dropout(x)
        x = v.ln_pre(x)

        seq_first = sequence_first(v.transformer)
        if seq_first:
            x = x.transpose(0, 1)
        blocks = v.transformer.resblocks
        inter = None
        for i, block in enumerate(blocks[:-1]):
            if i == self.feats_idx and with_inter:
                x, inter = _block_with_ln2(block, x)
                inter = _patch_map(inter.transpose(0, 1) if seq_first else inter, (h, w))
                if not with_dense:
                    return BackboneOutput(dense=None, inter=inter)
            else:
                x = block(x)
        last = blocks[-1]
        _, k, val = _qkv(last, x)
        val = F.linear(val, last.attn.out_proj.weight, last.attn.out_proj.bias)
        val = x + _ls(last, 1)(val)
        val = val + _ls(last, 2)(last.mlp(last.ln_2(val)))
        if seq_first:
            val, k = val.transpose(0, 1), k.transpose(0, 1)

        val = v.ln_post(val)
        if v.proj is not None:
            val = val @ v.proj  # the 1x1 "conv" of MaskCLIP: a per-patch linear map
        dense = _patch_map(val, (h, w))
        # MaskCLIP's ViT applies out_proj to the query, key and value parts alike (vit.py, return_qkv)
        keys = F.linear(k[:, 1:], last.attn.out_proj.weight, last.attn.out_proj.bias) if with_keys else None
        return BackboneOutput(dense=dense, inter=inter, keys=keys)


def _patch_map(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """B x (1 + h*w) x C batch-first tokens -> B x C x h x w patch map (class token dropped)."""
    return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


def _block_with_ln2(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """One open_clip residual block that also returns its ``ln_2`` output."""
    if hasattr(block, "attention"):  # open_clip ResidualAttentionBlock
        attn = block.attention(q_x=block.ln_1(x))
    else:  # open_clip CustomResidualAttentionBlock
        attn = block.ln_attn(block.attn(block.ln_1(x)))
    x = x + _ls(block, 1)(attn)
    normed = block.ln_2(x)
    return x + _ls(block, 2)(block.mlp(normed)), normed


_IDENTITY = nn.Identity()


def _ls(block: nn.Module, i: int) -> nn.Module:
    """The block's layer-scale ``ls_i`` (identity for CLIP ViT-B/16 and older open_clip)."""
    ls = getattr(block, f"ls_{i}", None)
    return _IDENTITY if ls is None else ls


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)
