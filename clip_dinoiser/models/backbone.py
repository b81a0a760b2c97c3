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
query/key attention is replaced by the identity on the value projection. That block is a
``LastBlock`` (``last_block.py``): SCLIP, NACLIP and ClearCLIP are other last blocks of the
same backbone (``CLIPBackbone(last_block=...)``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import INPUTS, POS_RESIZES
from ..download import hub_offline_if_unreachable
from ..errors import UserError
from ..files import check_local_file
from ..ops import pad_to_multiple
from ..readers import read_json, read_weights
from ..values import check_choice
from ..weights import clip_weight, local_or_value
from .last_block import VALUE_PATH, LastBlock, layer_scale, qkv

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# mmseg's img_norm_cfg (123.675, 116.28, 103.53) / (58.395, 57.12, 57.375) on 0..255, over 255: MaskCLIP's configs
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CLIP's mean/std as SCLIP, NACLIP and ClearCLIP write them for mmseg's SegDataPreProcessor (0..255 scale, three
# decimals: 122.771 is 255 x 0.48145466 rounded), over 255
PEERS_MEAN = (122.771 / 255, 116.746 / 255, 104.094 / 255)
PEERS_STD = (68.501 / 255, 66.632 / 255, 70.323 / 255)

# model.clip.input: how [0, 1] RGB images enter the tower
#   clip:  zero-padded (black) to the patch size, then the tower's own mean/std (CLIP-DINOiser's reference);
#   mmseg: ImageNet mean/std (mmseg's data preprocessing, MaskCLIP's configs), then zero-padded in the
#          normalised space (mmseg's PatchEmbed, padding='corner'), i.e. with the mean colour;
#   floor: CLIP's mean/std as SCLIP / NACLIP write them (PEERS_*), never padded: the patch embedding (a
#          convolution of stride 16) drops the last H mod 16 rows and W mod 16 columns, the grid is
#          floor(H / 16) x floor(W / 16), and its scores are resized to the whole window (SCLIP, NACLIP);
#   centre: the same mean/std, then zero-padded in the normalised space on all sides, the odd pixel right and
#          bottom; the grid's scores are resized to the padded window and the window cut out of them
#          (ClearCLIP's forward_slide, compute_padsize).
PATCH_GRID = MappingProxyType({"clip": "ceil", "mmseg": "ceil", "floor": "floor", "centre": "ceil"})


def input_stats(visual: nn.Module, mode: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of ``model.clip.input``: the tower's own for ``clip``, ImageNet's for ``mmseg``,
    the peers' rounded CLIP constants for ``floor`` and ``centre``."""
    if mode == "mmseg":
        return IMAGENET_MEAN, IMAGENET_STD
    check_choice(mode, INPUTS, "model.clip.input")
    if mode in ("floor", "centre"):
        return PEERS_MEAN, PEERS_STD
    mean = getattr(visual, "image_mean", None) or OPENAI_MEAN
    std = getattr(visual, "image_std", None) or OPENAI_STD
    return tuple(mean), tuple(std)


def prepare_input(images: Tensor, mean: Tensor, std: Tensor, patch_size: tuple[int, int], mode: str) -> Tensor:
    """B x 3 x H x W RGB in [0, 1] -> the tower's input under ``model.clip.input`` = ``mode``: a
    multiple of ``patch_size`` (padded right/bottom, cropped for ``floor``, padded around for ``centre``)."""
    if mode == "mmseg":
        return pad_to_multiple((images - mean.to(images.dtype)) / std.to(images.dtype), patch_size)
    if mode in ("floor", "centre"):
        x = (images - mean.to(images.dtype)) / std.to(images.dtype)
        if mode == "centre":
            return F.pad(x, centre_padding(x.shape[-2:], patch_size), value=0.0)
        (ph, pw), (h, w) = patch_size, x.shape[-2:]
        return x[..., : h - h % ph, : w - w % pw]
    x = pad_to_multiple(images, patch_size)
    return (x - mean.to(x.dtype)) / std.to(x.dtype)


def centre_padding(size: Sequence[int], patch_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that centres an H x W image in the next multiple
    of the patch size, the odd pixel right / bottom (ClearCLIP's ``compute_padsize``)."""
    (h, w), (ph, pw) = size, patch_size
    ch, cw = (ph - h % ph) % ph, (pw - w % pw) % pw
    return cw // 2, cw - cw // 2, ch // 2, ch - ch // 2


def grid_size(size: Sequence[int], patch_size: tuple[int, int], mode: str) -> tuple[int, int]:
    """The patch grid of an H x W input under ``model.clip.input`` = ``mode`` (``PATCH_GRID``)."""
    (h, w), (ph, pw) = size, patch_size
    if PATCH_GRID.get(mode) == "floor":
        return h // ph, w // pw
    return -(-h // ph), -(-w // pw)


def scores_to_pixels(scores: Tensor, size: Sequence[int], patch_size: tuple[int, int], mode: str) -> Tensor:
    """B x C x h x w patch-grid scores of inputs of ``size`` (H, W) -> B x C x H x W, bilinear
    (align_corners False): resized to the input (``clip``, ``mmseg``, ``floor``), or for ``centre``
    resized to the padded input and the input's own pixels cut out (ClearCLIP's mask cutting)."""
    size = (int(size[0]), int(size[1]))
    if mode != "centre":
        return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    (ph, pw), (gh, gw) = patch_size, scores.shape[-2:]
    left, _, top, _ = centre_padding(size, patch_size)
    full = F.interpolate(scores, size=(gh * ph, gw * pw), mode="bilinear", align_corners=False)
    return full[..., top : top + size[0], left : left + size[1]]


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
        patch_size: (h, w) pixels per patch; outputs are at the grid ceil(H / h) x ceil(W / w)
            (floor for ``model.clip.input=floor``: ``grid_size``).
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


def interpolate_pos_embed(pos_embed: Tensor, grid: tuple[int, int], native: tuple[int, int],
                          mode: str = "size") -> Tensor:
    """Resize a (1 + H*W) x C positional embedding to ``grid`` bicubically (align_corners=False).

    ``mode`` (``model.clip.pos_resize``): ``size`` resizes to the grid (sampling at the ratio of
    the sizes); ``dino`` resizes by the scale factor (g + 0.1) / native, as DINO's
    ``interpolate_pos_encoding`` and SCLIP, NACLIP and ClearCLIP after it do: the grid's size is
    the same, the sampling positions slightly different. The class-token entry is kept. At the
    native grid the embedding is returned unchanged.
    """
    if tuple(grid) == tuple(native):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    c = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, native[0], native[1], c).permute(0, 3, 1, 2)
    if mode == "dino":
        factor = ((grid[0] + 0.1) / native[0], (grid[1] + 0.1) / native[1])
        patch_pos = F.interpolate(patch_pos.float(), scale_factor=factor, mode="bicubic", align_corners=False,
                                  recompute_scale_factor=False)
        assert tuple(patch_pos.shape[-2:]) == tuple(grid), (patch_pos.shape, grid)
    else:
        check_choice(mode, POS_RESIZES, "model.clip.pos_resize")
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


def plain_block(block: nn.Module) -> bool:
    """Whether ``block`` is open_clip's ``ResidualAttentionBlock`` doing self-attention with an
    ``nn.MultiheadAttention`` (the blocks of CLIP's ViTs and text towers, every open_clip version),
    which ``residual_block`` runs by hand."""
    attn = getattr(block, "attn", None)
    return (isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim and attn.bias_k is None
            and not attn.add_zero_attn and not hasattr(block, "ln_1_kv")
            and all(hasattr(block, name) for name in ("ln_1", "ln_2", "mlp")))


def self_attention(block: nn.Module, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """What ``block.attention(ln_1(x))`` computes (a ``plain_block``), on B x L x C batch-first tokens.

    One projection of the contiguous tokens to queries, keys and values, then
    ``F.scaled_dot_product_attention`` per head, then ``out_proj``: equal to
    ``nn.MultiheadAttention`` to float rounding. Why not the module itself: on a CPU under bf16
    autocast it runs ``torch._native_multi_head_attention``, whose attention is two batched
    products (``aten::bmm`` of queries by transposed keys, then of the probabilities by values,
    plus a concatenation): oneDNN copies their operands on an AMX CPU (79 % of a bf16 forward in
    the issue's profile), a CPU without bf16 units runs them in reference kernels (over 10x slower
    than the fused ``scaled_dot_product_attention``, measured on an AVX2 CPU). Where its fast
    path's conditions fail (training, CUDA autocast) the module projects L x B x C transposed tokens.

    Args:
        attn_mask: additive L x L mask (the text tower's causal mask), cast to the queries' dtype
            as open_clip does.
    """
    attn = block.attn
    b, n, c = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)  # each B x heads x L x c/heads
    mask = None if attn_mask is None else attn_mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=attn.dropout if attn.training else 0.0)
    return F.linear(out.transpose(1, 2).reshape(b, n, c), attn.out_proj.weight, attn.out_proj.bias)


def residual_block(block: nn.Module, x: Tensor, *, seq_first: bool = False, attn_mask: Tensor | None = None) -> Tensor:
    """One open_clip residual block on B x L x C batch-first tokens (``block(x, attn_mask=...)``).

    A ``plain_block`` runs by hand (``self_attention``), so no layout or precision leaves the fast
    kernels; any other block runs as its own module, sequence-first where ``seq_first`` (open_clip
    < 2.26's blocks).
    """
    if plain_block(block):
        x = x + layer_scale(block, 1)(self_attention(block, x, attn_mask))
        return x + layer_scale(block, 2)(block.mlp(block.ln_2(x)))
    y = x.transpose(0, 1) if seq_first else x
    y = block(y) if attn_mask is None else block(y, attn_mask=attn_mask)
    return y.transpose(0, 1) if seq_first else y


class CLIPBackbone(nn.Module):
    """Frozen open_clip ViT image tower exposing MaskCLIP features.

    Args:
        visual: an open_clip ``VisionTransformer`` (``model.visual``).
        feats_idx: residual block whose ``ln_2`` output feeds the heads (negative counts from the
            end; -3 in the paper).
        mean, std: CLIP normalisation applied to [0, 1] RGB input.
        input: ``model.clip.input`` (``INPUTS``): pad before (``clip``) or after (``mmseg``) normalising,
            crop to the patch grid (``floor``), pad around (``centre``).
        last_block: the last residual block's computation (``last_block.py``; default MaskCLIP's value path).
        pos_resize: ``model.clip.pos_resize`` (``size`` or ``dino``, see ``interpolate_pos_embed``).
    """

    def __init__(
        self,
        visual: nn.Module,
        *,
        feats_idx: int,
        mean: tuple[float, float, float] = OPENAI_MEAN,
        std: tuple[float, float, float] = OPENAI_STD,
        input: str = "clip",
        last_block: LastBlock = VALUE_PATH,
        pos_resize: str = "size",
    ) -> None:
        super().__init__()
        self.input = check_choice(input, INPUTS, "model.clip.input")
        self.pos_resize = check_choice(pos_resize, POS_RESIZES, "model.clip.pos_resize")
        self.last_block = last_block
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
    def from_open_clip(cls, model: nn.Module, *, feats_idx: int, input: str = "clip",
                       last_block: LastBlock = VALUE_PATH, pos_resize: str = "size") -> CLIPBackbone:
        mean, std = input_stats(model.visual, input)
        return cls(model.visual, feats_idx=feats_idx, mean=mean, std=std, input=input, last_block=last_block,
                   pos_resize=pos_resize)

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
        if torch.compiler.is_compiling():  # torch.compile / torch.export (ONNX): the resize is in the graph
            return interpolate_pos_embed(pos, grid, self.native_grid, self.pos_resize)
        key = (tuple(grid), pos.device, pos.dtype, pos._version, pos.data_ptr(), self.pos_resize)
        if key not in self._pos_cache:
            if len(self._pos_cache) >= 16:
                self._pos_cache.clear()
            self._pos_cache[key] = interpolate_pos_embed(pos, grid, self.native_grid, self.pos_resize)
        return self._pos_cache[key]

    def forward(
        self, images: Tensor, *, with_inter: bool = True, with_keys: bool = False, with_dense: bool = True,
        last_block: LastBlock | None = None,
    ) -> BackboneOutput:
        """Run the tower once.

        Args:
            images: B x 3 x H x W RGB in [0, 1], any H, W (zero-padded to the patch size).
            with_inter: also return the ``ln_2`` features of block ``feats_idx``.
            with_keys: also return the last layer's attention keys as MaskCLIP's key smoothing reads
                them: through the attention's output projection (``MaskClipHead`` on its ViT).
            with_dense: compute the MaskCLIP features (False: stop after block ``feats_idx``;
                ``dense`` is then None).
            last_block: this call's last block instead of the backbone's own (a method whose last
                block reads something of these images besides CLIP's tokens, e.g. another model's
                features, builds it per call).
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

        # Tokens stay batch-first and contiguous through every block (``residual_block``), whatever
        # layout the blocks' own modules take (``sequence_first``: open_clip < 2.26).
        seq_first = sequence_first(v.transformer)
        blocks = v.transformer.resblocks
        inter = None
        for i, block in enumerate(blocks[:-1]):
            if i == self.feats_idx and with_inter:
                x, inter = _block_with_ln2(block, x, seq_first)
                inter = _patch_map(inter, (h, w))
                if not with_dense:
                    return BackboneOutput(dense=None, inter=inter)
            else:
                x = residual_block(block, x, seq_first=seq_first)
        last = blocks[-1]
        block = self.last_block if last_block is None else last_block
        val = v.ln_post(block(last, x, (h, w)))  # batch-first: B x (1 + h*w) x W
        if v.proj is not None:
            # the 1x1 "conv" of MaskCLIP: a per-patch linear map, ``val @ proj``. As ``F.linear`` on the
            # transposed copy: a CPU without bf16 matrix units runs a bf16 product whose second factor
            # is row-major (``x @ proj``) about 8x slower than one whose factor is K-contiguous.
            val = F.linear(val, v.proj.t().contiguous())
        dense = _patch_map(val, getattr(block, "out_grid", None) or (h, w))  # a block's own grid (ProxyCLIP's)
        keys = None
        if with_keys:  # MaskCLIP's ViT applies out_proj to the query, key and value parts alike (vit.py, return_qkv)
            # the keys as one contiguous matrix: ``F.linear`` on the strided slice would run a batched product
            k = qkv(last, x[:, 1:].contiguous())[1]
            keys = F.linear(k, last.attn.out_proj.weight, last.attn.out_proj.bias)
        return BackboneOutput(dense=dense, inter=inter, keys=keys)


def _patch_map(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """B x (1 + h*w) x C batch-first tokens -> B x C x h x w patch map (class token dropped)."""
    return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


def _block_with_ln2(block: nn.Module, x: Tensor, seq_first: bool = False) -> tuple[Tensor, Tensor]:
    """One open_clip residual block on B x L x C batch-first tokens (``residual_block``) that also
    returns its ``ln_2`` output."""
    if plain_block(block):
        attn = self_attention(block, x)
    else:
        y = x.transpose(0, 1) if seq_first else x
        if hasattr(block, "attention"):  # open_clip ResidualAttentionBlock
            attn = block.attention(q_x=block.ln_1(y))
        else:  # open_clip CustomResidualAttentionBlock
            attn = block.ln_attn(block.attn(block.ln_1(y)))
        attn = attn.transpose(0, 1) if seq_first else attn
    x = x + layer_scale(block, 1)(attn)
    normed = block.ln_2(x)
    return x + layer_scale(block, 2)(block.mlp(normed)), normed


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)
