"""ProxyCLIP, and CLIP-DINOiser's pooling on any dense CLIP, recomputed from first principles, never from our
modules: CLIP from open_clip's own parameters (``conv1`` as ``F.conv2d``, the blocks before the last as open_clip
runs them, the last block's value path, ``out_proj``, ``ln_post`` and the projection in plain operations), the
proxy from timm's own modules (its patch embedding as ``F.conv2d``, DINO's resize of the positional embedding, its
blocks, its final norm), the padding, the proxy attention and the classifier in plain tensor operations.

ProxyCLIP is github.com/mc-lan/ProxyCLIP (e7b767f): ``proxyclip_segmentor.py`` and ``open_clip/transformer.py``
(``custom_attn``). Its constants, with their sources: ``tests/test_peers_paper.py``.
"""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clip_dinoiser.errors import ConfigError, UserError
from clip_dinoiser.models import build_model

from .test_first_principles import correlations_by_hand, objectness_by_hand, text_by_hand
from .test_peers import PEERS_MEAN, PEERS_STD, dino_pos_embed, images_of, last_block_by_hand, layer_norm

OPENAI_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)  # their myutils.UnNormalize
OPENAI_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # their transforms.Normalize
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
BETA, GAMMA, PAD = 1.2, 3.0, 56  # ProxyCLIPSegmentation(beta=1.2, gamma=3.0); compute_padsize(H, W, 56)
# sizes: a multiple of 56 (no padding), the tiny CLIP's native 64, one padded unevenly, one whose padded side
# (168) is no multiple of CLIP's 16 (its convolution drops 8 pixels) and whose grids are not square
SIZES = [(112, 112), (64, 64), (75, 101), (120, 170)]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def proxyclip(tiny_clip_file, tiny_proxy, **settings):
    clip_name, path = tiny_clip_file
    clip = {"name": clip_name, "pretrained": path, **settings.pop("clip", {})}
    proxy = {**tiny_proxy, **settings.pop("proxy", {})}
    return build_model({"name": "proxyclip", "clip": clip, "proxy": proxy, "text_cache": None, **settings}).eval()


# ----------------------------------------------------------------------------- first principles

def pad_around(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Their compute_padsize: zeros around to the next multiple, the odd pixel right / bottom."""
    h, w = x.shape[-2:]
    dh, dw = (multiple - h % multiple) % multiple, (multiple - w % multiple) % multiple
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


def proxy_by_hand(vit, normalised: torch.Tensor) -> torch.Tensor:
    """DINO's get_intermediate_layers(x)[0] without the class token, B x C x H' x W': the window un-normalised
    with OpenAI's mean/std, ImageNet-normalised, the patch embedding as a stride-p convolution (it drops the
    remainder), DINO's positional resize, timm's blocks, the final LayerNorm."""
    x = (normalised * OPENAI_STD + OPENAI_MEAN - IMAGENET_MEAN) / IMAGENET_STD
    p = vit.patch_embed.proj.kernel_size[0]
    tokens = F.conv2d(x, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias, stride=p)
    b, _, gh, gw = tokens.shape
    tokens = torch.cat([vit.cls_token.expand(b, -1, -1), tokens.flatten(2).transpose(1, 2)], dim=1)
    tokens = tokens + dino_pos_embed(vit.pos_embed[0], (gh, gw))
    for block in vit.blocks:
        tokens = block(tokens)
    tokens = layer_norm(vit.norm, tokens)[:, 1:]
    return tokens.transpose(1, 2).reshape(b, -1, gh, gw)


def attention_by_hand(feats: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """Cosines of the proxy's patches, minus beta times their mean over the window, times gamma; the negatives
    get no weight, the others exp(s) / sum exp(s) over the row."""
    f = feats.flatten(2)
    f = f / f.pow(2).sum(dim=1, keepdim=True).sqrt()
    s = torch.einsum("bcm,bcn->bmn", f, f)
    s = (s - s.mean(dim=(1, 2), keepdim=True) * beta) * gamma
    e = torch.where(s < 0, torch.zeros_like(s), torch.exp(s - s.amax(dim=-1, keepdim=True)))
    return e / e.sum(dim=-1, keepdim=True)


def clip_tokens_by_hand(visual, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The tokens entering CLIP's last block for a normalised input (no padding: the stride-16 convolution drops
    the remainder), DINO's positional resize, open_clip's blocks before the last."""
    p = visual.conv1.kernel_size[0]
    tokens = F.conv2d(x, visual.conv1.weight, stride=p)
    grid = tuple(tokens.shape[-2:])
    tokens = tokens.flatten(2).transpose(1, 2)
    tokens = torch.cat([visual.class_embedding.view(1, 1, -1).expand(tokens.shape[0], -1, -1), tokens], dim=1)
    tokens = visual.ln_pre(tokens + dino_pos_embed(visual.positional_embedding, grid))
    for block in visual.transformer.resblocks[:-1]:
        tokens = block(tokens)
    return tokens, grid


def proxyclip_by_hand(visual, vit, images: torch.Tensor, beta: float = BETA, gamma: float = GAMMA) -> torch.Tensor:
    """ProxyCLIP's dense features, B x D x H' x W' on the proxy's grid."""
    x = pad_around((images - PEERS_MEAN) / PEERS_STD, PAD)
    feats = proxy_by_hand(vit, x)
    tokens, (h, w) = clip_tokens_by_hand(visual, x)
    last = visual.transformer.resblocks[-1]
    c = tokens.shape[-1]
    v = layer_norm(last.ln_1, tokens) @ last.attn.in_proj_weight[2 * c :].T + last.attn.in_proj_bias[2 * c :]
    v = v[:, 1:].transpose(1, 2).reshape(v.shape[0], c, h, w)
    v = F.interpolate(v, size=feats.shape[-2:], mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    out = attention_by_hand(feats, beta, gamma) @ v
    out = out @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
    out = layer_norm(visual.ln_post, out) @ visual.proj
    return out.transpose(1, 2).reshape(out.shape[0], -1, *feats.shape[-2:])


# ----------------------------------------------------------------------------- ProxyCLIP

def test_proxy_attention_shifts_scales_and_masks_the_cosines():
    from clip_dinoiser.models.proxyclip import proxy_attention

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 16, 5, 7, generator=g) + torch.linspace(0, 2, 16).view(1, 16, 1, 1)
    for beta, gamma in ((BETA, GAMMA), (1.0, 2.0), (1.6, 5.0), (0.0, 3.0)):
        got = proxy_attention(feats, beta, gamma)
        torch.testing.assert_close(got, attention_by_hand(feats, beta, gamma), rtol=1e-5, atol=1e-7)
    got = proxy_attention(feats, BETA, GAMMA)
    assert (got == 0).any() and (got > 0).any()  # masked and kept pairs
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 35))
    # the mean is the window's own: a second image does not change the first's weights
    torch.testing.assert_close(proxy_attention(feats[:1], BETA, GAMMA), got[:1], rtol=0, atol=0)


@pytest.mark.parametrize("size", SIZES)
def test_proxyclip_is_its_definition_on_open_clips_and_timms_modules(tiny_clip_file, tiny_proxy, size):
    model = proxyclip(tiny_clip_file, tiny_proxy)
    images = images_of(*size)
    got = model.features(images).dense
    expected = proxyclip_by_hand(model.backbone.visual, model.proxy.vit, images)
    padded = [-(-s // PAD) * PAD for s in size]
    assert got.shape[-2:] == (padded[0] // 8, padded[1] // 8)  # the proxy's grid (patch 8)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_beta_and_gamma_are_the_configs(tiny_clip_file, tiny_proxy):
    model = proxyclip(tiny_clip_file, tiny_proxy, proxy={"beta": 1.0, "gamma": 2.0})
    images = images_of(75, 101)
    expected = proxyclip_by_hand(model.backbone.visual, model.proxy.vit, images, 1.0, 2.0)
    torch.testing.assert_close(model.features(images).dense, expected, rtol=1e-4, atol=1e-5)
    assert (expected - proxyclip_by_hand(model.backbone.visual, model.proxy.vit, images)).abs().max() > 1e-3


def test_window_scores_are_resized_to_the_padded_window_and_cut_out(tiny_clip_file, tiny_proxy):
    model = proxyclip(tiny_clip_file, tiny_proxy)
    scores = torch.randn(1, 3, 14, 14)
    full = F.interpolate(scores, size=(112, 112), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model.to_pixels(scores, (75, 101)), full[..., 18:93, 5:106], rtol=0, atol=0)
    assert torch.equal(model.to_pixels(scores, (112, 112)), full)


def test_proxyclip_classifies_as_its_postprocess_result(tiny_clip_file, tiny_proxy):
    """The logit scale 40, the softmax over every name, a class its best name's probability."""
    model = proxyclip(tiny_clip_file, tiny_proxy)
    names = ["cat, kitty", "dog", "sofa, couch, settee"]
    model.set_vocabulary(names)
    images = images_of(75, 101)
    dense = proxyclip_by_hand(model.backbone.visual, model.proxy.vit, images)
    queries = ["cat", "kitty", "dog", "sofa", "couch", "settee"]
    clip_name, path = tiny_clip_file
    text = text_by_hand(open_clip.create_model(clip_name, pretrained=path).eval(), open_clip.get_tokenizer(clip_name),
                        queries)
    cos = torch.einsum("bdhw,qd->bqhw", dense / dense.norm(dim=1, keepdim=True), text)
    q = torch.softmax(40.0 * cos, dim=1)
    expected = torch.stack([q[:, :2].amax(1), q[:, 2], q[:, 3:].amax(1)], dim=1)
    torch.testing.assert_close(model(images), expected, rtol=1e-4, atol=1e-5)


def test_a_proxy_of_clips_patch_size_needs_no_resize_of_the_values(tiny_clip_file, tiny_proxy):
    """DINO ViT-B/16 as the proxy (``model.proxy.arch``): its grid is CLIP's, where the bilinear resize of the
    values is the identity."""
    kwargs = {**tiny_proxy["kwargs"]}
    model = proxyclip(tiny_clip_file, {"arch": "vit_base_patch16_224", "pretrained": None, "kwargs": kwargs})
    images = images_of(112, 112)
    got = model.features(images).dense
    assert got.shape[-2:] == (7, 7)
    torch.testing.assert_close(got, proxyclip_by_hand(model.backbone.visual, model.proxy.vit, images),
                               rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- DINOiser pooling on any dense CLIP

NAMES = ["cat", "background", "dog, puppy"]
QUERIES, OWNERS = ["cat", "background", "dog", "puppy"], [0, 1, 2, 2]
TEMPERATURES = {"maskclip": 100.0, "sclip": 40.0, "naclip": 40.0, "clearclip": 50.0, "proxyclip": 40.0}


def pooled_by_hand(dense, inter, heads, text, temperature, gamma=0.2, delta=0.99) -> torch.Tensor:
    """CLIP-DINOiser's decoding of a method's dense features: the heads' thresholded correlations pool them
    (weights over their sum + 1e-6), cosines with each name, the softmax over the names, a class its best
    name's, the background rule with the objectness head."""
    corrs = correlations_by_hand(inter, heads.obj_proj.weight, heads.obj_proj.bias, "replicate")
    corrs = torch.where(corrs < gamma, torch.zeros_like(corrs), corrs)
    f = dense.flatten(2)
    pooled = torch.einsum("bnm,bdm->bdn", corrs, f) / (corrs.sum(dim=2)[:, None, :] + 1e-6)
    cos = torch.einsum("bdn,qd->bqn", pooled / pooled.norm(dim=1, keepdim=True), text)
    q = torch.softmax(temperature * cos, dim=1)
    owners = torch.tensor(OWNERS)
    probs = torch.stack([q[:, owners == k].amax(dim=1) for k in range(len(NAMES))], dim=1)
    logits = objectness_by_hand(inter, heads.bkg_decoder.weight, heads.bkg_decoder.bias).flatten(1)
    background = 1 / (1 + torch.exp(-logits)) <= 0.5
    unsure = probs.max(dim=1).values < delta
    probs[:, 1][background & unsure] = 1.0
    return probs.view(*probs.shape[:2], *dense.shape[-2:])


@pytest.mark.parametrize("name", ["maskclip", "sclip", "naclip", "clearclip", "proxyclip"])
def test_dinoiser_pooling_of_each_methods_features_equals_pooling_by_hand(tiny_clip_file, tiny_proxy,
                                                                          tiny_heads_file, name):
    """``model.dinoiser=true``: the method's own dense features (the model without the switch), pooled by the
    heads' correlations from CLIP's block -3 and refined by their objectness, by hand."""
    from dataclasses import replace

    clip_name, path = tiny_clip_file
    common = {"name": name, "clip": {"name": clip_name, "pretrained": path}, "text_cache": None}
    if name == "proxyclip":
        common["proxy"] = tiny_proxy
    if name == "maskclip":  # its classifier's other rule for a class of several names (one mean embedding) aside
        common["maskclip"] = {"synonyms": "max"}
    plain = build_model(common).eval()
    pooled = build_model({**common, "dinoiser": True, "checkpoint": tiny_heads_file, "proj_dim": 16}).eval()
    for m in (plain, pooled):
        m.set_vocabulary(NAMES)
    images = images_of(75, 101)
    dense = plain.features(images).dense
    seen = pooled.padded(images) if name == "proxyclip" else images
    inter = pooled.backbone(seen).inter  # CLIP's block -3 (tests/test_first_principles.py checks it by hand)
    if dense.shape[-2:] != inter.shape[-2:]:  # ProxyCLIP's proxy grid: pooled on CLIP's, where the heads are
        dense = F.interpolate(dense, size=inter.shape[-2:], mode="bilinear", align_corners=False)
    text = text_by_hand(open_clip.create_model(clip_name, pretrained=path).eval(), open_clip.get_tokenizer(clip_name),
                        QUERIES)
    expected = pooled_by_hand(dense, inter, pooled.heads, text, TEMPERATURES[name])
    feats = pooled.features(images)
    got = pooled.decode(feats, replace(pooled.decoding, bg_refine=True))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    unpooled = pooled.decode(replace(feats, corrs=None, objectness=None))
    assert not torch.allclose(got, unpooled, atol=1e-3)  # the pooling changed them


def test_dinoiser_on_a_peer_keeps_the_peers_last_block(tiny_clip_file, tiny_heads_file):
    clip_name, path = tiny_clip_file
    model = build_model({"name": "naclip", "clip": {"name": clip_name, "pretrained": path}, "text_cache": None,
                         "dinoiser": True, "checkpoint": tiny_heads_file, "proj_dim": 16})
    assert (model.backbone.last_block.attention, model.backbone.last_block.arch) == ("naclip", "reduced")
    assert (model.decoding.temperature, model.decoding.pamr_steps) == (40.0, 10)
    images = images_of(64, 64)
    x = (images - PEERS_MEAN) / PEERS_STD
    visual = model.backbone.visual
    tokens, grid = clip_tokens_by_hand(visual, x)
    last = last_block_by_hand(visual.transformer.resblocks[-1], tokens, grid, "naclip", "reduced", 5.0)
    dense = (layer_norm(visual.ln_post, last) @ visual.proj)[:, 1:].transpose(1, 2).reshape(2, -1, *grid)
    torch.testing.assert_close(model.features(images).dense, dense, rtol=1e-4, atol=5e-5)


# ----------------------------------------------------------------------------- bad settings

def test_proxyclip_refuses_a_resnet_tower_naming_the_key(tiny_rn_file, tiny_proxy):
    config, path = tiny_rn_file
    with pytest.raises(ConfigError, match=r"^model\.clip\.name=.* is a ResNet tower: model\.name=proxyclip") as e:
        build_model({"name": "proxyclip", "clip": {"name": config, "pretrained": path}, "proxy": tiny_proxy,
                     "text_cache": None})
    assert "\n" not in str(e.value)


def test_dinoiser_on_a_resnet_names_the_key(tiny_rn_file, tiny_heads_file):
    config, path = tiny_rn_file
    with pytest.raises(ConfigError, match=r"^model\.dinoiser=true: model\.clip\.name=.* is a ResNet tower"):
        build_model({"name": "maskclip", "clip": {"name": config, "pretrained": path}, "text_cache": None,
                     "dinoiser": True, "checkpoint": tiny_heads_file})


@pytest.mark.parametrize("settings, key", [
    ({"proxy": {"beta": -1}}, r"^model\.proxy\.beta=-1(\.0)?: must be"),
    ({"proxy": {"gamma": 0}}, r"^model\.proxy\.gamma=0(\.0)?: must be"),
    ({"proxy": {"pad_to": 0}}, r"^model\.proxy\.pad_to=0: must be"),
    ({"proxy": {"patch": 8}}, r"^model\.proxy\.patch: unknown key"),
    ({"maskclip": {"ks_thresh": 0.5}}, r"^model\.maskclip\.ks_thresh=0\.5: ProxyCLIP's features"),
    ({"dinoiser": True}, r"^model\.checkpoint=released: the released heads read block -3 of ViT-B-16 / "
                         r"laion2b_s34b_b88k, not of ViT-B-16 / openai; train heads on it \(python tools/train\.py "
                         r"model\.clip\.pretrained=openai"),
])
def test_bad_proxyclip_settings_are_one_line_errors_naming_the_key(settings, key):
    from clip_dinoiser.models import model_config

    with pytest.raises(ConfigError, match=key) as e:
        model_config({"name": "proxyclip", "clip": {"name": "ViT-B-16", "pretrained": "openai"}, **settings})
    assert "\n" not in str(e.value)


def test_dinoiser_on_a_model_without_dense_clip_features_names_the_key(tiny_teachers):
    from clip_dinoiser.models import model_config

    with pytest.raises(ConfigError, match=r"^model\.dinoiser=true: model\.name=dino_maskclip has no dense"):
        model_config({"name": "dino_maskclip", "dinoiser": True, "teachers": tiny_teachers})


def test_proxyclip_without_its_proxy_weights_offline_names_the_key(tmp_path, tiny_clip_file, monkeypatch):
    """The proxy's timm tag with no local copy, no cache and no network: one line naming model.proxy.pretrained
    and the file to put in the weights folder, before any weights load."""
    from clip_dinoiser.models import check_model_config

    monkeypatch.setenv("CLIP_DINOISER_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip_name, path = tiny_clip_file
    with pytest.raises(UserError, match=r"model\.proxy\.pretrained=vit_base_patch8_224\.dino") as e:
        check_model_config({"name": "proxyclip", "clip": {"name": clip_name, "pretrained": path}})
    assert "\n" not in str(e.value) and "vit_base_patch8_224.dino" in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"model\.proxy\.pretrained"):
        check_model_config({"name": "proxyclip", "clip": {"name": clip_name, "pretrained": path},
                            "proxy": {"pretrained": str(tmp_path / "dino_vitb8.pth")}})
