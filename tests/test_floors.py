"""Dependency floors.

* open_clip < 2.26 runs its transformer sequence-first and says so nowhere but in its
  ``nn.MultiheadAttention`` modules (the ``Transformer`` has no ``batch_first``). The
  modules of open_clip 2.24.0 are reproduced below, verbatim in what they compute, so the
  default suite checks that layout under any installed open_clip.
* Opt-in (``CLIP_DINOISER_FLOORS=1``): ``tests/tools/check_floors.py`` installs every dependency at
  the floor pyproject.toml declares into a temporary environment and runs the fidelity tests
  there (docs/dependencies.md).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections import OrderedDict
from importlib.metadata import version

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clip_dinoiser.models import CLIPBackbone
from clip_dinoiser.models.backbone import sequence_first
from clip_dinoiser.models.text import TextClassifier, encode_text_to_eot, imagenet_templates, text_tower

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- open_clip 2.24.0 (src/open_clip/transformer.py, model.py), the parts CLIP ViTs use -------------

class ResidualAttentionBlock224(nn.Module):
    """open_clip 2.24.0 ``ResidualAttentionBlock`` (self-attention, no layer scale): its
    ``nn.MultiheadAttention(d_model, n_head)`` is built with torch's default ``batch_first=False``."""

    def __init__(self, d_model: int, n_head: int, mlp_ratio: float, act_layer: type, norm_layer: type) -> None:
        super().__init__()
        self.ln_1 = norm_layer(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ls_1 = nn.Identity()
        self.ln_2 = norm_layer(d_model)
        mlp_width = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, mlp_width)),
            ("gelu", act_layer()),
            ("c_proj", nn.Linear(mlp_width, d_model)),
        ]))
        self.ls_2 = nn.Identity()

    def attention(self, q_x, k_x=None, v_x=None, attn_mask=None):
        k_x = k_x if k_x is not None else q_x
        v_x = v_x if v_x is not None else q_x
        attn_mask = attn_mask.to(q_x.dtype) if attn_mask is not None else None
        return self.attn(q_x, k_x, v_x, need_weights=False, attn_mask=attn_mask)[0]

    def forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
        x = q_x + self.ls_1(self.attention(q_x=self.ln_1(q_x), attn_mask=attn_mask))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer224(nn.Module):
    """open_clip 2.24.0 ``Transformer``: no ``batch_first`` attribute; its callers permute
    NLD -> LND before it and back after it."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act_layer: type,
                 norm_layer: type) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList([
            ResidualAttentionBlock224(width, heads, mlp_ratio, act_layer, norm_layer) for _ in range(layers)
        ])

    def get_cast_dtype(self) -> torch.dtype:
        return self.resblocks[0].mlp.c_fc.weight.dtype

    def forward(self, x, attn_mask=None):
        for r in self.resblocks:
            x = r(x, attn_mask=attn_mask)
        return x


def vision_forward_224(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip 2.24.0 ``VisionTransformer.forward`` (class-token pooling, no attentional pool)."""
    x = visual.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
    x = x + visual.positional_embedding.to(x.dtype)
    x = visual.patch_dropout(x)
    x = visual.ln_pre(x)
    x = x.permute(1, 0, 2)  # NLD -> LND
    x = visual.transformer(x)
    x = x.permute(1, 0, 2)  # LND -> NLD
    pooled = visual.ln_post(x[:, 0])
    return pooled @ visual.proj


def encode_text_224(model: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """open_clip 2.24.0 ``CLIP.encode_text`` (argmax pooling)."""
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding.to(cast_dtype)
    x = x.permute(1, 0, 2)  # NLD -> LND
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = x.permute(1, 0, 2)  # LND -> NLD
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), text.argmax(dim=-1)]
    return x @ model.text_projection


def to_224(transformer: nn.Module) -> Transformer224:
    """The same weights in open_clip 2.24.0's sequence-first transformer."""
    block = transformer.resblocks[0]
    old = Transformer224(
        block.ln_1.normalized_shape[0], len(transformer.resblocks), block.attn.num_heads,
        block.mlp.c_fc.out_features / block.mlp.c_fc.in_features, type(block.mlp.gelu), type(block.ln_1),
    )
    old.load_state_dict(transformer.state_dict(), strict=True)
    return old


def as_open_clip_224(model: nn.Module) -> nn.Module:
    """A copy of an open_clip CLIP whose image and text transformers are 2.24.0's."""
    old = copy.deepcopy(model)
    old.visual.transformer = to_224(model.visual.transformer)
    old.transformer = to_224(model.transformer)
    return old.eval()


# --- tests ----------------------------------------------------------------------------------------

@torch.no_grad()
def test_open_clip_224_modules_reproduce_installed_open_clip(clip, tiny_clip_file):
    """The port is faithful: same weights, same CLIP image and text embeddings as open_clip itself."""
    old = as_open_clip_224(clip)
    assert not hasattr(old.visual.transformer, "batch_first") and not hasattr(old.transformer, "batch_first")
    assert old.visual.transformer.resblocks[0].attn.batch_first is False
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(vision_forward_224(old.visual, images), clip.encode_image(images),
                               rtol=1e-5, atol=1e-5)
    tokens = open_clip.get_tokenizer(tiny_clip_file[0])(["a photo of a cat.", "sky", "a tiny dog in the grass"])
    torch.testing.assert_close(encode_text_224(old, tokens), clip.encode_text(tokens), rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_open_clip_224_sequence_first_backbone_equals_batch_first(clip, size):
    """Dense, intermediate and key features of 2.24's layout equal the batch-first ones."""
    old = as_open_clip_224(clip)
    assert sequence_first(old.visual.transformer)
    torch.manual_seed(0)
    images = torch.rand(2, 3, *size)
    ref = CLIPBackbone.from_open_clip(copy.deepcopy(clip), feats_idx=-3)(images, with_inter=True, with_keys=True)
    out = CLIPBackbone.from_open_clip(old, feats_idx=-3)(images, with_inter=True, with_keys=True)
    for a, b in [(out.dense, ref.dense), (out.inter, ref.inter), (out.keys, ref.keys)]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    inter_only = CLIPBackbone.from_open_clip(old, feats_idx=-3)(images, with_inter=True, with_dense=False)
    torch.testing.assert_close(inter_only.inter, ref.inter, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_open_clip_224_text_embeddings_equal_open_clip_encode_text(clip, tiny_clip_file):
    """The end-of-text encoding of 2.24's layout equals 2.24's own encode_text and the installed one."""
    name = tiny_clip_file[0]
    old = as_open_clip_224(clip)
    assert sequence_first(old.transformer)
    prompts = [t.format(n) for n in ("cat", "television monitor", "sky") for t in imagenet_templates()[:20]]
    tokens = open_clip.get_tokenizer(name)(prompts)
    ours = encode_text_to_eot(old, tokens)
    torch.testing.assert_close(ours, encode_text_224(old, tokens), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, clip.encode_text(tokens), rtol=1e-5, atol=1e-5)
    # and through the classifier, which is what segmentation reads
    a = TextClassifier(text_tower(old), open_clip.get_tokenizer(name), templates="imagenet80")
    b = TextClassifier(text_tower(clip), open_clip.get_tokenizer(name), templates="imagenet80")
    a.set_vocabulary(["cat", "sky"])
    b.set_vocabulary(["cat", "sky"])
    torch.testing.assert_close(a.embeddings, b.embeddings, rtol=1e-5, atol=1e-5)


def test_installed_open_clip_layout_is_detected(clip):
    """open_clip >= 2.26 builds batch-first blocks by default, older ones sequence-first."""
    major, minor = (int(p) for p in version("open_clip_torch").split(".")[:2])  # 2.24 has no __version__
    expected = (major, minor) < (2, 26)
    assert sequence_first(clip.visual.transformer) is expected
    assert sequence_first(clip.transformer) is expected


def _batch_first(t: torch.Tensor, batch: int) -> torch.Tensor:
    """A hooked B x L x C or L x B x C tensor as B x L x C, told apart by its shape alone."""
    assert batch in (t.shape[0], t.shape[1]) and t.shape[0] != t.shape[1]
    return t if t.shape[0] == batch else t.transpose(0, 1)


@torch.no_grad()
def test_backbone_matches_hooks_on_installed_open_clip(clip):
    """Under whatever open_clip is installed (2.24 in the floor check): the MaskCLIP features
    re-derived from hooks on open_clip's own forward, whose token layout is read from the
    hooked tensors' shapes, not from any flag."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    visual = clip.visual
    blocks = visual.transformer.resblocks
    stash = {}
    hooks = [blocks[-2].register_forward_hook(lambda m, i, o: stash.__setitem__("x", o)),
             blocks[-3].ln_2.register_forward_hook(lambda m, i, o: stash.__setitem__("inter", o))]
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    try:
        visual((images - mean) / std)
    finally:
        for h in hooks:
            h.remove()
    x, inter = _batch_first(stash["x"], 2), _batch_first(stash["inter"], 2)
    last = blocks[-1]
    v = F.linear(last.ln_1(x), last.attn.in_proj_weight, last.attn.in_proj_bias).chunk(3, dim=-1)[2]
    v = x + F.linear(v, last.attn.out_proj.weight, last.attn.out_proj.bias)
    v = v + last.mlp(last.ln_2(v))
    dense = (visual.ln_post(v)[:, 1:] @ visual.proj).reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
    out = CLIPBackbone.from_open_clip(copy.deepcopy(clip), feats_idx=-3)(images, with_inter=True)
    torch.testing.assert_close(out.dense, dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.inter, inter[:, 1:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2),
                               rtol=1e-5, atol=1e-5)


class _Attention(nn.Module):
    """Stands for open_clip's own ``Attention`` (custom blocks): a flag in 2.26-2.32, none in 3.x."""

    def __init__(self, batch_first: bool | None) -> None:
        super().__init__()
        if batch_first is not None:
            self.batch_first = batch_first


def _stack(attn: nn.Module, transformer_flag: bool | None) -> nn.Module:
    block = nn.Module()
    block.attn = attn
    stack = nn.Module()
    stack.resblocks = nn.ModuleList([block])
    if transformer_flag is not None:
        stack.batch_first = transformer_flag
    return stack


@pytest.mark.parametrize(("attn", "transformer_flag", "expected"), [
    (nn.MultiheadAttention(8, 2), None, True),                     # open_clip < 2.26
    (nn.MultiheadAttention(8, 2, batch_first=True), None, False),  # the module decides ...
    (nn.MultiheadAttention(8, 2), True, True),                     # ... over the transformer's flag
    (_Attention(batch_first=False), True, True),                   # open_clip 2.26-2.32 Attention
    (_Attention(batch_first=True), None, False),
    (_Attention(batch_first=None), True, False),                   # open_clip 3.x Attention
    (_Attention(batch_first=None), None, True),                    # open_clip 2.24 Attention (L x N x C)
], ids=["mha-224", "mha-bf", "mha-over-flag", "attn-226-seq", "attn-226-bf", "attn-3x", "attn-224"])
def test_sequence_first_is_read_from_the_attention_module(attn, transformer_flag, expected):
    assert sequence_first(_stack(attn, transformer_flag)) is expected


def test_open_clip_3x_custom_blocks_are_batch_first():
    if not hasattr(open_clip.transformer, "CustomResidualAttentionBlock") or \
            "block_type" not in open_clip.transformer.Transformer.__init__.__code__.co_varnames:
        pytest.skip("this open_clip has no custom-block transformer")
    stack = open_clip.transformer.Transformer(16, 1, 2, block_type="custom")
    assert not isinstance(stack.resblocks[0].attn, nn.MultiheadAttention)
    assert sequence_first(stack) is False
    x = torch.randn(2, 5, 16)  # B x L x C: a sample's output does not depend on the other sample
    torch.testing.assert_close(stack.resblocks[0](x)[:1], stack.resblocks[0](x[:1]))


@pytest.mark.slow
@pytest.mark.floors
@pytest.mark.skipif(os.environ.get("CLIP_DINOISER_FLOORS") != "1",
                    reason="installs the floor versions into a temporary environment: set CLIP_DINOISER_FLOORS=1")
def test_fidelity_tests_pass_at_the_dependency_floors(tmp_path):
    """tests/tools/check_floors.py: pyproject.toml's floors pinned exactly, the fidelity tests run there."""
    report = tmp_path / "floors.json"
    env = {k: v for k, v in os.environ.items() if k != "CLIP_DINOISER_FLOORS"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "tools", "check_floors.py"), "--report",
                           str(report)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert report.exists()
