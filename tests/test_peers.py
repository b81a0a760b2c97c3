"""The training-free peers (SCLIP, NACLIP, ClearCLIP) recomputed from first principles, never from our modules:
each last block from open_clip's own parameters (``ln_1``, ``attn.in_proj_weight``, ``out_proj``, ``ln_2``,
``mlp``) in plain tensor operations, the patch embedding as ``F.conv2d``, the positional embedding resized as
DINO does; NACLIP's neighbourhood as its window convolution; PAMR from its paper's definition, pixel by pixel;
the max over synonyms as SCLIP's one-hot product; the thresholds as their evaluators write them.

The side-by-side runs against the authors' own code (same random ViT-B/16) are in ``docs/peers.md``.
"""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

from clip_dinoiser.errors import ConfigError
from clip_dinoiser.models import build_model
from clip_dinoiser.models.last_block import AttentionBlock, neighbourhood
from clip_dinoiser.models.pamr import pamr
from clip_dinoiser.models.refinement import area_threshold, low_confidence_to_first
from clip_dinoiser.models.text import max_over_synonyms

PEERS_MEAN = torch.tensor([122.771, 116.746, 104.094]).view(1, 3, 1, 1) / 255  # their SegDataPreProcessor
PEERS_STD = torch.tensor([68.501, 66.632, 70.323]).view(1, 3, 1, 1) / 255
SIZES = [(64, 64), (80, 112), (75, 101)]  # native grid, a larger one, and one that is no multiple of 16


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def peer(tiny_clip_file, name: str, **settings):
    clip_name, path = tiny_clip_file
    clip = {"name": clip_name, "pretrained": path, **settings.pop("clip", {})}
    return build_model({"name": name, "clip": clip, "text_cache": None, **settings}).eval()


def images_of(h: int, w: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    x[:, :, : h // 2, : w // 3] = torch.rand(n, 3, 1, 1, generator=g)
    return x


# ----------------------------------------------------------------------------- first principles

def dino_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """DINO's interpolate_pos_encoding: bicubic by the scale factor (n + 0.1) / sqrt(N)."""
    n = int(math.sqrt(pos.shape[0] - 1))
    if tuple(grid) == (n, n):
        return pos
    patch = pos[1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=((grid[0] + 0.1) / n, (grid[1] + 0.1) / n), mode="bicubic",
                          align_corners=False)
    return torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(-1, pos.shape[1])])


def layer_norm(ln, x):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def gelu_of(mlp) -> str:
    return "quick" if type(mlp.gelu).__name__ == "QuickGELU" else "exact"


def mlp_by_hand(mlp, x):
    h = x @ mlp.c_fc.weight.T + mlp.c_fc.bias
    h = h * torch.sigmoid(1.702 * h) if gelu_of(mlp) == "quick" else 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return h @ mlp.c_proj.weight.T + mlp.c_proj.bias


def gaussian_by_window(grid: tuple[int, int], std: float) -> torch.Tensor:
    """NACLIP's construction: a (2h-1) x (2w-1) Gaussian window centred on each patch by a 'same'
    convolution of the patch's one-hot map, the class token's row and column zero."""
    h, w = grid
    ys = torch.arange(2 * h - 1, dtype=torch.float64) - (h - 1)
    xs = torch.arange(2 * w - 1, dtype=torch.float64) - (w - 1)
    window = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * std**2))
    onehots = torch.eye(h * w, dtype=torch.float64).view(h * w, 1, h, w)
    spread = F.conv2d(onehots, window[None, None], padding=(h - 1, w - 1)).view(h * w, h * w)
    out = torch.zeros(h * w + 1, h * w + 1, dtype=torch.float64)
    out[1:, 1:] = spread
    return out.float()


def last_block_by_hand(block, x, grid, attention: str, arch: str, std: float) -> torch.Tensor:
    """B x T x W tokens through the last block, from the block's parameters in plain operations."""
    b, t, c = x.shape
    heads = block.attn.num_heads
    y = layer_norm(block.ln_1, x)
    qkv = y @ block.attn.in_proj_weight.T + block.attn.in_proj_bias
    q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
    split = [z.reshape(b, t, heads, c // heads).permute(0, 2, 1, 3) for z in (q, k, v)]
    qh, kh, vh = split
    s = 1 / math.sqrt(c // heads)

    def softmax(z):
        z = z - z.amax(-1, keepdim=True)
        return z.exp() / z.exp().sum(-1, keepdim=True)

    if attention == "value":
        out = v
    else:
        if attention == "vanilla":
            a = softmax(s * qh @ kh.transpose(-1, -2))
        elif attention == "csa":
            a = softmax(s * qh @ qh.transpose(-1, -2)) + softmax(s * kh @ kh.transpose(-1, -2))
        elif attention == "qq":
            a = softmax(s * qh @ qh.transpose(-1, -2))
        elif attention == "kk":
            a = softmax(s * kh @ kh.transpose(-1, -2))
        elif attention == "naclip":
            a = softmax(s * kh @ kh.transpose(-1, -2) + gaussian_by_window(grid, std))
        else:  # nonly: NACLIP's einsum over (head, token, token) of |q| |k|, averaged, per image
            level = torch.stack([s * torch.einsum("hp,hq->hpq", qh[i].norm(dim=-1), kh[i].norm(dim=-1)).mean()
                                 for i in range(b)])
            a = softmax(gaussian_by_window(grid, std)[None, None] * level[:, None, None, None])
        out = (a @ vh).permute(0, 2, 1, 3).reshape(b, t, c)
    out = out @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    if arch == "reduced":
        return out
    x = x + out
    return x + mlp_by_hand(block.mlp, layer_norm(block.ln_2, x))


def dense_by_hand(visual, images, attention, arch, std, input_mode, pos_resize) -> torch.Tensor:
    """open_clip's ViT run by hand: conv1 as F.conv2d on the prepared input, class token, positional
    embedding, ln_pre and blocks 0..n-2 as open_clip runs them, the last block by hand, ln_post, proj."""
    p = visual.conv1.kernel_size[0]
    if input_mode == "floor":
        x = (images - PEERS_MEAN) / PEERS_STD  # no padding: the stride-16 convolution drops the remainder
    elif input_mode == "centre":
        x = (images - PEERS_MEAN) / PEERS_STD
        h, w = x.shape[-2:]
        ph, pw = (p - h % p) % p, (p - w % p) % p
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    else:
        mean = torch.tensor(visual.image_mean or (0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
        std_ = torch.tensor(visual.image_std or (0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
        h, w = images.shape[-2:]
        x = (F.pad(images, (0, (p - w % p) % p, 0, (p - h % p) % p)) - mean) / std_
    tokens = F.conv2d(x, visual.conv1.weight, stride=p)  # B x W x h x w
    grid = tuple(tokens.shape[-2:])
    tokens = tokens.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(tokens.shape[0], -1, -1)
    tokens = torch.cat([cls, tokens], dim=1)
    n = int(math.sqrt(visual.positional_embedding.shape[0] - 1))
    if pos_resize == "dino":
        pos = dino_pos_embed(visual.positional_embedding, grid)
    elif grid == (n, n):
        pos = visual.positional_embedding
    else:
        patch = visual.positional_embedding[1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=grid, mode="bicubic", align_corners=False)
        pos = torch.cat([visual.positional_embedding[:1], patch.permute(0, 2, 3, 1).reshape(-1, patch.shape[1])])
    x = visual.ln_pre(tokens + pos)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    x = last_block_by_hand(visual.transformer.resblocks[-1], x, grid, attention, arch, std)
    x = layer_norm(visual.ln_post, x) @ visual.proj
    return x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)


BLOCKS = [("value", "vanilla"), ("vanilla", "vanilla"), ("csa", "vanilla"), ("qq", "reduced"), ("kk", "vanilla"),
          ("naclip", "reduced"), ("nonly", "reduced"), ("csa", "reduced"), ("qq", "vanilla"), ("naclip", "vanilla")]


@pytest.fixture(scope="module")
def tiny_visual(tiny_clip_file):
    from clip_dinoiser.models.backbone import load_open_clip

    return load_open_clip(*tiny_clip_file).visual


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("attention, arch", BLOCKS)
def test_last_blocks_equal_their_definition_on_open_clips_modules(tiny_visual, size, attention, arch):
    from clip_dinoiser.models.backbone import CLIPBackbone

    input_mode = {(64, 64): "clip", (80, 112): "floor", (75, 101): "centre"}[size]
    backbone = CLIPBackbone.from_open_clip(types.SimpleNamespace(visual=tiny_visual), feats_idx=-3, input=input_mode,
                                           last_block=AttentionBlock(attention, arch, 1.5), pos_resize="dino")
    images = images_of(*size)
    got = backbone(images, with_inter=False).dense
    want = dense_by_hand(tiny_visual, images, attention, arch, 1.5, input_mode, "dino")
    assert got.shape == want.shape
    assert (got - want).abs().max() < 2e-5 * want.abs().max()


@pytest.mark.parametrize("name, attention, arch, input_mode", [("sclip", "csa", "vanilla", "floor"),
                                                               ("naclip", "naclip", "reduced", "floor"),
                                                               ("clearclip", "qq", "reduced", "centre")])
def test_each_method_is_its_last_block_on_the_tools_model(tiny_clip_file, name, attention, arch, input_mode):
    from .test_paper import compose_tool

    clip_name, path = tiny_clip_file
    cfg = compose_tool("eval", f"model={name}", f"protocol={name}", f"model.clip.name={clip_name}",
                       f"model.clip.pretrained={path}", "model.text_cache=null").model
    model = build_model(cfg)
    assert model.backbone.last_block == AttentionBlock(attention, arch, 5.0)
    assert (model.backbone.input, model.backbone.pos_resize) == (input_mode, "dino")
    for size in SIZES:
        images = images_of(*size, seed=size[1])
        want = dense_by_hand(model.backbone.visual, images, attention, arch, 5.0, input_mode, "dino")
        got = model.backbone(images, with_inter=False).dense
        assert (got - want).abs().max() < 2e-5 * want.abs().max()
        grid = (size[0] // 16, size[1] // 16) if input_mode == "floor" else (-(-size[0] // 16), -(-size[1] // 16))
        assert tuple(got.shape[-2:]) == grid


def test_naclips_neighbourhood_is_its_window_convolution():
    for grid, std in (((3, 5), 5.0), ((4, 4), 1.0), ((1, 6), 2.5)):
        got = neighbourhood(grid, std)
        assert torch.allclose(got, gaussian_by_window(grid, std), atol=1e-7)
        assert got[0].abs().sum() == 0 and got[:, 0].abs().sum() == 0 and torch.allclose(got[1:, 1:].diagonal(),
                                                                                          torch.ones(grid[0] * grid[1]))


def test_dino_position_resize_differs_from_resizing_to_the_size(tiny_clip_file):
    from clip_dinoiser.models.backbone import interpolate_pos_embed

    pos = peer(tiny_clip_file, "maskclip").backbone.visual.positional_embedding
    for grid in ((5, 7), (8, 8), (3, 2)):
        dino = interpolate_pos_embed(pos, grid, (4, 4), "dino")
        assert torch.equal(dino, dino_pos_embed(pos, grid))
        size = interpolate_pos_embed(pos, grid, (4, 4), "size")
        assert dino.shape == size.shape and not torch.allclose(dino, size)
    assert interpolate_pos_embed(pos, (4, 4), (4, 4), "dino") is pos


# ----------------------------------------------------------------------------- PAMR

def pamr_by_definition(image: torch.Tensor, scores: torch.Tensor, steps: int, dilations) -> torch.Tensor:
    """Araslanov & Roth (CVPR 2020) Sec. 3.3, pixel by pixel: affinities to the 8 neighbours at each
    dilation (coordinates clamped to the image: replicate padding), normalised by the local std of
    the 3x3 windows of every dilation, averaged over the channels, softmax over the neighbours."""
    _, c, h, w = image.shape
    img, mask = image[0].double(), scores[0].double()

    def at(t, y, x):
        return t[:, min(max(y, 0), h - 1), min(max(x, 0), w - 1)]

    offsets = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    aff = torch.zeros(len(offsets), h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            window = torch.stack([at(img, y + dy * d, x + dx * d) for d in dilations
                                  for dy in (-1, 0, 1) for dx in (-1, 0, 1)], dim=1)  # C x 9n
            sigma = window.std(dim=1)
            k = torch.stack([(-(img[:, y, x] - at(img, y + oy, x + ox)).abs() / (1e-8 + 0.1 * sigma)).mean()
                             for oy, ox in offsets])
            aff[:, y, x] = torch.softmax(k, dim=0)
    for _ in range(steps):
        new = torch.zeros_like(mask)
        for y in range(h):
            for x in range(w):
                new[:, y, x] = sum(aff[n, y, x] * at(mask, y + oy, x + ox) for n, (oy, ox) in enumerate(offsets))
        mask = new
    return mask[None].float()


@pytest.mark.parametrize("steps, dilations, size", [(3, (1, 2), (9, 11)), (2, (8, 16), (7, 5)), (1, (1,), (6, 8))])
def test_pamr_is_its_papers_definition(steps, dilations, size):
    g = torch.Generator().manual_seed(sum(size))
    image = torch.rand(1, 3, *size, generator=g)
    image[..., : size[0] // 2, :] = 0.3  # flat regions: std 0 there (the 1e-8)
    scores = torch.randn(1, 4, *size, generator=g)
    got = pamr(image, scores, steps, dilations)
    assert torch.allclose(got, pamr_by_definition(image, scores, steps, dilations), atol=1e-5)
    assert torch.equal(pamr(image, scores, 0, dilations), scores)


def test_pamr_by_default_uses_naclips_dilations_8_and_16():
    """NA naclip.py NACLIP(pamr_stride=(8, 16)) gives PAMR(pamr_steps, dilations=pamr_stride): our module's default."""
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 18, 20, generator=g)
    scores = torch.randn(1, 2, 18, 20, generator=g)
    assert torch.allclose(pamr(image, scores, 1), pamr_by_definition(image, scores, 1, (8, 16)), atol=1e-5)


def test_pamr_is_linear_in_the_scores():
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 20, 24, generator=g)
    a, b = torch.randn(2, 1, 2, 20, 24, generator=g)
    both = pamr(image, 2 * a + b, 4, (1, 2))
    assert torch.allclose(both, 2 * pamr(image, a, 4, (1, 2)) + pamr(image, b, 4, (1, 2)), atol=1e-5)


# ----------------------------------------------------------------------------- classifier and thresholds

def test_a_class_is_its_best_names_probability_as_sclips_one_hot_product(tiny_clip_file):
    model = peer(tiny_clip_file, "sclip")
    vocab = ["sky, bed, wall", "cat", "bed", "dog, puppy"]  # 'bed' twice: two queries, as SCLIP's COCO-Object
    model.set_vocabulary(vocab)
    classes = model.text.current
    queries, index = classes.name_queries()
    assert index.tolist() == [0, 0, 0, 1, 2, 3, 3] and torch.equal(queries[1], queries[4])
    images = images_of(64, 80)
    feats = model.features(images)
    unit = F.normalize(feats.dense, dim=1)
    probs = (40.0 * torch.einsum("bdhw,qd->bqhw", unit, queries)).softmax(dim=1)  # over all 7 names
    one_hot = F.one_hot(index).T.view(4, 7, 1, 1)
    want = torch.stack([(p[None] * one_hot).max(1)[0] for p in probs])  # SCLIP's postprocess_result
    assert torch.allclose(model.decode(feats), want, atol=1e-6)
    assert torch.equal(max_over_synonyms(probs, index, 4), want)


def test_thresholds_as_their_evaluators_write_them():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(5, 30, 40, generator=g).softmax(0)
    out = low_confidence_to_first(probs, 0.3)
    low = probs.max(0)[0] < 0.3
    pred = probs.argmax(0)
    pred[low] = 0  # seg_pred[seg_logits.max(0)[0] < prob_thd] = 0
    assert torch.equal(out.argmax(0), pred) and torch.equal(out[:, ~low], probs[:, ~low])
    # SCLIP's area_thd: one-hot areas of classes 1.., compared with thd times their sum
    one_hot = F.one_hot(probs.argmax(0), 5).float()
    area = one_hot[:, :, 1:].sum((0, 1), keepdim=True)
    keep = (area > 0.3 * area.sum()).float()
    want = probs.clone()
    want[1:] *= keep.transpose(0, -1)
    assert torch.equal(area_threshold(probs, 0.3), want)


def test_finish_refines_averages_then_takes_the_names_softmax_and_maximum(tiny_clip_file):
    """In their protocols the cosines are averaged and resized, PAMR runs on them, then the softmax
    over the names, the maximum per class, the area and probability thresholds."""
    from dataclasses import replace

    model = peer(tiny_clip_file, "naclip", post={"pamr_steps": 3, "pamr_dilations": [1, 2], "prob_thd": 0.4,
                                                  "area_thd": 0.1})
    model.set_vocabulary(["a, b", "c", "d, e, f"])
    d = replace(model.decoding, scores="logits")
    classes = model.text.current
    g = torch.Generator().manual_seed(1)
    scores = 40 * torch.randn(6, 20, 30, generator=g) / 10
    image = (torch.rand(3, 10, 15, generator=g) * 255).to(torch.uint8)
    got = model.finish(scores, image, d, classes)
    x = (image.float()[None] / 255 - PEERS_MEAN) / PEERS_STD
    x = F.interpolate(x, size=(20, 30), mode="bilinear", align_corners=False)
    refined = pamr(x, scores[None], 3, (1, 2))[0].softmax(0)
    want = max_over_synonyms(refined[None], torch.tensor([0, 0, 1, 2, 2, 2]), 3)[0]
    want = low_confidence_to_first(area_threshold(want, 0.1), 0.4)
    assert torch.allclose(got, want, atol=1e-6)
    assert model.score_channels(d, classes) == 6 and model.score_channels(replace(d, scores="probs"), classes) == 3


def test_the_evaluator_finishes_each_setting_alone(tiny_clip_file):
    """Several settings in one pass (a sweep): each slice of the windows' scores is finished with its own
    decoding, as a run of that setting alone."""
    from dataclasses import replace

    from clip_dinoiser.config import SlideConfig
    from clip_dinoiser.engine.evaluation.evaluate import Decoded, Setting
    from clip_dinoiser.engine.evaluation.inference import SlidingWindows

    model = peer(tiny_clip_file, "sclip", clip={"input": "floor"})
    model.set_vocabulary(["a, b", "c", "d"])
    base = replace(model.decoding, scores="logits")
    settings = [Setting(base, model.text.current), Setting(replace(base, prob_thd=0.5), model.text.current),
                Setting(replace(base, synonyms="mean", scores="probs"), model.text.current)]
    cfg = SlideConfig(scale=(2048, 64), crop=(48, 48), stride=(32, 32), window_batch=3)
    image = (torch.rand(3, 70, 90) * 255).to(torch.uint8)
    runner = SlidingWindows(Decoded(model, settings), cfg)
    (_, together), = runner.put(image, (50, 60), tag=0) + runner.flush()
    alone = []
    for s in settings:
        runner = SlidingWindows(Decoded(model, [s]), cfg)
        (_, probs), = runner.put(image, (50, 60), tag=0) + runner.flush()
        alone.append(probs)
    assert torch.allclose(together, torch.cat(alone), atol=1e-6)
    assert together.shape[0] == 9


def test_centre_padding_cuts_the_window_out_of_the_padded_scores(tiny_clip_file):
    model = peer(tiny_clip_file, "clearclip", clip={"input": "centre"})
    scores = torch.randn(1, 3, 5, 7)  # the grid of a 75 x 101 input: padded to 80 x 112 (2 / 3 above, 5 / 6 left)
    got = model.to_pixels(scores, (75, 101))
    full = F.interpolate(scores, size=(80, 112), mode="bilinear", align_corners=False)
    assert torch.equal(got, full[..., 2:77, 5:106])
    floor = peer(tiny_clip_file, "sclip", clip={"input": "floor"})
    assert torch.equal(floor.to_pixels(scores, (75, 101)),
                       F.interpolate(scores, size=(75, 101), mode="bilinear", align_corners=False))


# ----------------------------------------------------------------------------- bad settings

@pytest.mark.parametrize("name", ["sclip", "naclip", "clearclip"])
def test_peers_refuse_a_resnet_tower_naming_the_key(tiny_rn_file, name):
    config, path = tiny_rn_file
    with pytest.raises(ConfigError, match=r"^model\.clip\.name=.* is a ResNet tower: model\.name=" + name):
        build_model({"name": name, "clip": {"name": config, "pretrained": path}, "text_cache": None})


@pytest.mark.parametrize("settings, key", [
    ({"last_block": {"attention": "qk"}}, r"model\.last_block\.attention=qk: unknown"),
    ({"last_block": {"arch": "tiny"}}, r"model\.last_block\.arch=tiny: unknown"),
    ({"last_block": {"gaussian_std": 0}}, r"model\.last_block\.gaussian_std"),
    ({"maskclip": {"synonyms": "min"}}, r"model\.maskclip\.synonyms=min: unknown"),
    ({"maskclip": {"pd_thresh": 0.5}}, r"model\.maskclip\.synonyms=max: prompt denoising"),
    ({"post": {"prob_thd": 1.5}}, r"model\.post\.prob_thd"),
    ({"post": {"pamr_dilations": [0]}}, r"model\.post\.pamr_dilations"),
    ({"clip": {"pos_resize": "nearest"}}, r"model\.clip\.pos_resize=nearest: unknown"),
    ({"clip": {"input": "middle"}}, r"model\.clip\.input=middle: unknown"),
    ({"per_benchmark": {"voc": {"clip": {"name": "RN50"}}}}, r"model\.per_benchmark\.voc\.clip\.name: only settings"),
    ({"per_benchmark": {"voc": {"post": {"prob_thd": 2}}}}, r"model\.per_benchmark\.voc\.post\.prob_thd"),
])
def test_bad_settings_are_one_line_errors_naming_the_key(tiny_clip_file, settings, key):
    from clip_dinoiser.models import model_config

    clip_name, path = tiny_clip_file
    with pytest.raises(ConfigError, match=key) as e:
        model_config({"name": "sclip", "clip": {"name": clip_name, "pretrained": path}, **settings})
    assert "\n" not in str(e.value)


def test_a_changed_last_block_on_a_resnet_names_the_key(tiny_rn_file):
    from clip_dinoiser.models import model_config

    config, path = tiny_rn_file
    with pytest.raises(ConfigError, match=r"^model\.last_block\.attention=csa: model\.clip\.name=.* ResNet"):
        model_config({"name": "maskclip", "clip": {"name": config, "pretrained": path},
                      "last_block": {"attention": "csa"}})


# ----------------------------------------------------------------------------- the comparison table

def test_comparison_summary_has_one_row_per_method(tmp_path):
    """``tools/eval.py -m model=maskclip,sclip,naclip,clearclip,clip_dinoiser data=all``: one run per method;
    the table has a row per method named in a model.name column (not the dozen model.* keys that only follow
    the method), a key that varies otherwise stays a column, and each method's published numbers are a row
    of their own."""
    from clip_dinoiser.engine.reporting.summary import Run, tables

    methods = {"maskclip": {"model.last_block.attention": "value", "model.maskclip.temperature": 100.0},
               "sclip": {"model.last_block.attention": "csa", "model.maskclip.temperature": 40.0},
               "naclip": {"model.last_block.attention": "naclip", "model.post.pamr_steps": 10},
               "clip_dinoiser": {"model.last_block.attention": "value", "model.maskclip.temperature": 100.0}}
    runs = []
    for i, (name, own) in enumerate(methods.items()):
        for precision in ("fp32", "bf16"):
            settings = {"model.name": name, "model.post.pamr_steps": 0, "precision": precision, **own}
            paper = 62.1 if name == "clip_dinoiser" else None
            results = {"voc": {"mIoU": 10.0 * i, "paper_mIoU": paper}, "ade20k": {"mIoU": i + 0.5, "paper_mIoU": None}}
            runs.append(Run(f"{tmp_path}/{name}-{precision}", "eval", settings, results))
    (table,) = tables(runs)
    assert table.columns == ["run", "model.name", "precision", "voc", "ade20k", "average"]
    rows = [r for r in table.rows if not r["run"].startswith("paper")]
    assert [(r["model.name"], r["precision"]) for r in rows] == [(n, p) for n in methods for p in ("fp32", "bf16")]
    papers = [r for r in table.rows if r["run"].startswith("paper")]
    assert [(r["run"], r["model.name"], r["voc"]) for r in papers] == [("paper: clip_dinoiser", "clip_dinoiser", 62.1)]
    one = [r for r in runs if r.settings["precision"] == "fp32"]  # a row per method, no other column
    (table,) = tables(one)
    assert table.columns == ["run", "model.name", "voc", "ade20k", "average"]
    (table,) = tables([r for r in runs if r.settings["model.name"] == "sclip"])  # one method: as before
    assert table.columns == ["run", "precision", "voc", "ade20k", "average"] and table.rows[-1]["run"] == "paper"


def tiny_clip_json(tiny_clip_file) -> tuple[str, str]:
    """(the tiny CLIP's model-config JSON, its weights): what a tool in another process is given."""
    import os

    name, path = tiny_clip_file
    return os.path.join(os.path.dirname(path), f"{name}.json"), path


def eval_tool(tmp_path, *args: str):
    import subprocess
    import sys

    from .test_maskclip_plus import ROOT

    return subprocess.run([sys.executable, f"{ROOT}/tools/eval.py", *args, "device=cpu", "num_workers=0",
                           "model.text_cache=null", "progress=false"], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "HOME": str(tmp_path)}, timeout=600)


def test_eval_tool_under_protocol_sclip_equals_the_evaluator_with_its_settings(tmp_path, tiny_clip_file):
    """The preset through the command line: SCLIP's windows, class names (a class of 26 names), logit scale
    65 and both thresholds on VOC, the cosines averaged; the same mIoU as the evaluator called directly."""
    import json

    from clip_dinoiser.config import SlideConfig
    from clip_dinoiser.data.benchmarks import BENCHMARKS
    from clip_dinoiser.engine.evaluation.evaluate import Evaluator

    from .synthetic_data import make_benchmark

    root = make_benchmark(str(tmp_path / "data"), "voc", n=2)
    clip_name, path = tiny_clip_json(tiny_clip_file)
    r = eval_tool(tmp_path, "model=sclip", "protocol=sclip", "data=voc", f"data.root={root}",
                  f"model.clip.name={clip_name}", f"model.clip.pretrained={path}", "slide.scale=[160,64]",
                  "slide.crop=[48,48]", "slide.stride=[32,32]", "output=out")
    assert r.returncode == 0, r.stderr[-2000:]
    reported = json.loads((tmp_path / "out" / "results.json").read_text())["voc"]
    assert "sky" in reported["class_IoU"]  # SCLIP's class 0: the background's 26 names
    model = peer(tiny_clip_file, "sclip", clip={"input": "floor"},
                 per_benchmark={"voc": {"maskclip": {"temperature": 65.0}, "post": {"prob_thd": 0.1, "area_thd": 0.1}}})
    slide = SlideConfig(scale=(160, 64), crop=(48, 48), stride=(32, 32), scores="logits")
    with Evaluator(slide=slide, num_workers=0, vocabulary_set="sclip", progress=False) as ev:
        setting = ev.setting(model, BENCHMARKS["voc"])
        assert (setting.decoding.temperature, setting.decoding.prob_thd, setting.decoding.area_thd) == (65, 0.1, 0.1)
        direct = ev.evaluate(model, BENCHMARKS["voc"], root)
    assert reported["mIoU"] == pytest.approx(direct.miou, abs=1e-9)


@pytest.mark.slow
def test_one_command_gives_the_comparison_table(tmp_path, tiny_clip_file, tiny_heads_file, tiny_proxy):
    """README's command: every method on the benchmarks, one row per method in the sweep's summary; then the
    same under SCLIP's protocol."""
    from .synthetic_data import make_benchmark

    data = tmp_path / "data"
    for bench in ("voc", "voc20"):
        make_benchmark(str(data), bench, n=2)
    clip_name, path = tiny_clip_json(tiny_clip_file)
    common = [f"data.root={data}", "data=all", "data.names=[voc,voc20]", f"model.clip.name={clip_name}",
              f"model.clip.pretrained={path}", f"model.checkpoint={tiny_heads_file}", "model.proj_dim=16",
              "slide.scale=[160,64]", "slide.crop=[48,48]", "slide.stride=[32,32]",
              f"model.proxy.arch={tiny_proxy['arch']}", f"model.proxy.pretrained={tiny_proxy['pretrained']}",
              "++model.proxy.kwargs={" + ",".join(f"{k}:{v}" for k, v in tiny_proxy["kwargs"].items()) + "}"]
    for protocol in ("clip_dinoiser", "sclip"):
        r = eval_tool(tmp_path, "-m", "model=maskclip,sclip,naclip,clearclip,proxyclip,clip_dinoiser",
                      f"protocol={protocol}", f"hydra.sweep.dir={protocol}", *common)
        assert r.returncode == 0, r.stderr[-3000:]
        summary = (tmp_path / protocol / "summary.md").read_text().splitlines()
        assert summary[0].startswith("| run | model.name | voc | voc20 | average |"), summary[0]
        names = [line.split("|")[2].strip() for line in summary[2:]]
        assert names[:6] == ["maskclip", "sclip", "naclip", "clearclip", "proxyclip", "clip_dinoiser"]


def test_load_gives_each_method_with_its_settings_and_segments(tiny_clip_file):
    """The Python API: ``load("naclip", protocol="naclip")`` is NACLIP with PAMR under its protocol; the result's
    probabilities are the classes' (the max over their names), PAMR and the softmax taken after the windows."""
    import numpy as np

    import clip_dinoiser

    clip_name, path = tiny_clip_file
    seg = clip_dinoiser.load("naclip", device="cpu", protocol="naclip", clip={"name": clip_name, "pretrained": path},
                             text_cache=None, slide={"scale": [160, 64], "crop": [48, 48], "stride": [32, 32]})
    m = seg.model
    assert (m.backbone.last_block.attention, m.decoding.pamr_steps, m.backbone.input) == ("naclip", 10, "floor")
    image = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    result = seg.segment(image, ["cat, kitty", "dog", "sofa, couch"])
    assert result.probs.shape == (3, 70, 90) and result.labels.shape == (70, 90)
    sums = result.probs.sum(0)  # each class its best name's probability: at most the names' total, 1
    assert (result.probs >= 0).all() and (sums <= 1 + 1e-5).all() and (sums < 0.999).any()
    assert (result.labels == result.probs.argmax(0)).all()


def test_a_last_block_given_per_call_replaces_the_backbones_own(tiny_visual):
    """The seam a method whose last block reads more than CLIP's tokens uses (e.g. attention from another
    model's features of the same images): ``backbone(images, last_block=...)``."""
    from clip_dinoiser.models.backbone import CLIPBackbone

    seen = []

    def recording(block, x, grid):
        seen.append((tuple(x.shape), grid))
        return AttentionBlock("qq", "reduced")(block, x, grid)

    clip = types.SimpleNamespace(visual=tiny_visual)
    plain = CLIPBackbone.from_open_clip(clip, feats_idx=-3)
    qq = CLIPBackbone.from_open_clip(clip, feats_idx=-3, last_block=AttentionBlock("qq", "reduced"))
    images = images_of(64, 80)
    assert torch.equal(plain(images, last_block=recording).dense, qq(images).dense)
    assert seen == [((2, 21, 64), (4, 5))]
    assert not torch.equal(plain(images).dense, qq(images).dense)
