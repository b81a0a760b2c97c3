"""MaskCLIP as its authors ran it: ResNet towers (dense features and keys recomputed from open_clip's
own ``ModifiedResNet`` and ``AttentionPool2d`` modules), the input normalisation and padding order,
whole-image inference against mmseg's own ``EncoderDecoder``, and the protocol presets."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clip_dinoiser.config import SlideConfig
from clip_dinoiser.engine.evaluation.inference import image_outputs, resize_keep_ratio, to_tensor
from clip_dinoiser.errors import ConfigError
from clip_dinoiser.models import build_model

from .conftest import random_image

NAMES = ["cat", "dog", "sky", "road", "tree"]
IMAGENET_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1) / 255  # mmseg's img_norm_cfg
IMAGENET_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1) / 255


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def maskclip(clip_file, **settings):
    name, path = clip_file
    model = build_model({"name": "maskclip", "clip": {"name": name, "pretrained": path, **settings.pop("clip", {})},
                         "text_cache": None, **settings})
    model.set_vocabulary(NAMES)
    return model


def first_principles_resnet(clip_model: nn.Module, images: torch.Tensor, mean, std):
    """MaskCLIP on a ResNet by hand, from open_clip's own modules called one by one: the stem and
    the four stages, then the attention pool's ``v_proj`` and ``c_proj`` (``nn.Linear`` modules)
    at every location (MaskCLIP's 1x1 convolutions), and ``k_proj`` for the keys."""
    v = clip_model.visual
    x = (images - mean) / std
    x = v.act1(v.bn1(v.conv1(x)))
    x = v.act2(v.bn2(v.conv2(x)))
    x = v.act3(v.bn3(v.conv3(x)))
    x = v.avgpool(x)
    for stage in (v.layer1, v.layer2, v.layer3, v.layer4):
        for block in stage:
            x = block(x)
    tokens = x.permute(0, 2, 3, 1)  # B x h x w x C
    dense = v.attnpool.c_proj(v.attnpool.v_proj(tokens)).permute(0, 3, 1, 2)
    keys = v.attnpool.k_proj(tokens).flatten(1, 2)
    return dense, keys


def softmax_probs(dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """softmax(100 * cos(patch, class)) over the classes: B x K x h x w."""
    cos = torch.einsum("bdhw,kd->bkhw", F.normalize(dense, dim=1), F.normalize(text, dim=1))
    return (100 * cos).softmax(dim=1)


# (127, 255): odd sides whose last row and column reach the last stage (each halving keeps them), so
# any padding of the input would show; at 75 the stages' floor divisions drop the last row anyway
@pytest.mark.parametrize("size", [(64, 64), (96, 160), (75, 131), (127, 255)])
@pytest.mark.parametrize("input_mode", ["clip", "mmseg"])
def test_resnet_dense_probabilities_from_open_clips_own_modules(tiny_rn_file, size, input_mode):
    model = maskclip(tiny_rn_file, clip={"input": input_mode})
    assert not any(p.requires_grad for p in model.backbone.parameters())  # frozen
    clip_model = open_clip.create_model(tiny_rn_file[0].rsplit("/", 1)[-1][:-5], pretrained=tiny_rn_file[1]).eval()
    torch.manual_seed(1)
    images = torch.rand(2, 3, *size)
    if input_mode == "mmseg":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:  # the tower's own preprocessing (OpenAI's for a ResNet)
        mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    dense, keys = first_principles_resnet(clip_model, images, mean, std)
    feats = model.features(images, keys=True)
    torch.testing.assert_close(feats.dense, dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats.keys, keys, rtol=1e-5, atol=1e-5)
    assert feats.dense.shape[-2:] == dense.shape[-2:]  # the grid the convolutions give, no padding
    if size[0] % 32 == 0 and size[1] % 32 == 0:  # the output stride the backbone reports: open_clip's
        assert model.backbone.patch_size == (size[0] // dense.shape[-2], size[1] // dense.shape[-1])
    text = model.text.current.embeddings
    torch.testing.assert_close(model.decode(feats), softmax_probs(dense, text), rtol=1e-5, atol=1e-6)


def test_resnet_value_path_is_the_attention_pools_output_on_a_constant_map(tiny_rn_file):
    """open_clip's own ``AttentionPool2d.forward`` on a map whose every location holds one feature,
    with its positional embedding zeroed: every token is that feature, attention averages equal
    values, and the pool returns ``c_proj(v_proj(feature))``, which is MaskCLIP's dense feature at
    that location."""
    model = maskclip(tiny_rn_file)
    clip_model = open_clip.create_model(tiny_rn_file[0].rsplit("/", 1)[-1][:-5], pretrained=tiny_rn_file[1]).eval()
    pool = copy.deepcopy(clip_model.visual.attnpool)
    pool.positional_embedding.zero_()
    images = torch.rand(1, 3, 96, 128)
    trunk = model.backbone.trunk(images)
    dense = model.features(images).dense
    side = int(round((pool.positional_embedding.shape[0] - 1) ** 0.5))
    for y, x in [(0, 0), (1, 2), (2, 3)]:
        constant = trunk[:, :, y : y + 1, x : x + 1].expand(-1, -1, side, side)
        torch.testing.assert_close(pool(constant)[0], dense[0, :, y, x], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ks, pd", [(0.9, 0.0), (0.0, 0.4), (0.9, 0.4)])
def test_resnet_key_smoothing_and_prompt_denoising_as_maskclips_code(tiny_rn_file, ks, pd):
    """MaskCLIP's ``refine_output``, written out: PD sets a class whose softmax maximum over the
    image is below ``pd`` to a cosine of -100; KS takes ``F.normalize(k, p=2)`` on the B x N x C
    keys (dimension 1: each channel over the locations), weights ``k k^T``, and replaces the
    probabilities of the locations whose maximum is below ``ks``."""
    model = maskclip(tiny_rn_file, maskclip={"ks_thresh": ks, "pd_thresh": pd})
    clip_model = open_clip.create_model(tiny_rn_file[0].rsplit("/", 1)[-1][:-5], pretrained=tiny_rn_file[1]).eval()
    images = torch.rand(2, 3, 128, 160)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    dense, keys = first_principles_resnet(clip_model, images, mean, std)
    text = F.normalize(model.text.current.embeddings, dim=1)
    cos = torch.einsum("bdhw,kd->bkhw", F.normalize(dense, dim=1), text)
    n, c, h, w = cos.shape
    if pd > 0:
        dropped = (100 * cos).softmax(1).view(n, c, -1).max(-1)[0] < pd
        cos = cos.masked_fill(dropped[:, :, None, None], -100.0)
    out = (100 * cos).softmax(1)
    if ks > 0:
        p = out.view(n, c, -1).transpose(1, 2)
        k = keys / keys.norm(dim=1, keepdim=True)
        smoothed = (k @ k.transpose(1, 2)) @ p
        p = torch.where(p.max(-1, keepdim=True)[0] < ks, smoothed, p)
        out = p.transpose(1, 2).reshape(n, c, h, w)
    torch.testing.assert_close(model.decode(model.features(images, keys=True)), out, rtol=1e-4, atol=1e-5)
    assert model.decode(model.features(images, keys=True)).shape == (2, len(NAMES), h, w)


def test_prompt_denoising_and_key_smoothing_decide_per_class_and_per_patch_as_maskclips_code():
    """MaskCLIP's ``refine_output`` at its edges. PD: a class is dropped iff its maximum over the
    image is strictly below ``pd_thresh`` (``max_cls_conf < pd_thresh``: a class exactly at it
    stays) and gets a cosine of -100, i.e. -100 x 100 in scores at MaskCLIP's temperature 100. KS:
    a patch is replaced iff its own maximum over the classes is strictly below ``ks_thresh``
    (``output.max(dim=-1, keepdim=True)[0] < ks_thresh`` on the B x N x K map); the others keep
    their probabilities."""
    from clip_dinoiser.models.refinement import key_smoothing, prompt_denoising

    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2) * 10
    probs = torch.full((1, 3, 2, 2), 0.125)
    probs[0, 0, 1, 1], probs[0, 1, 0, 1], probs[0, 2, 1, 0] = 0.5, 0.25, 0.75  # each class's maximum
    out = prompt_denoising(logits, probs, 0.5)
    assert torch.equal(out[:, [0, 2]], logits[:, [0, 2]])  # class 0 at exactly 0.5 stays
    assert torch.equal(out[:, 1], torch.full((1, 2, 2), -100.0 * 100.0))

    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.3, 0.7]]).T.reshape(1, 2, 2, 2)  # 4 patches
    keys = torch.randn(1, 4, 6)
    p = probs.flatten(2).transpose(1, 2)  # B x N x K
    k = keys / keys.norm(dim=1, keepdim=True)  # F.normalize(k, p=2): dimension 1
    smoothed = (k @ k.transpose(1, 2)) @ p
    replaced = torch.tensor([False, False, True, False])  # maxima 0.9, 0.6 (= thresh), 0.5, 0.7
    expected = torch.where(replaced[None, :, None], smoothed, p).transpose(1, 2).reshape(1, 2, 2, 2)
    torch.testing.assert_close(key_smoothing(probs, keys, 0.6), expected)


def test_background_refinement_resizes_a_coarser_objectness_map_bilinearly():
    """The refinements' third rule (CLIP-DINOiser's) on an objectness map of another grid: resized
    bilinearly (align_corners=False) to the probabilities' grid, then the rule per pixel."""
    from clip_dinoiser.models.refinement import background_refinement

    torch.manual_seed(0)
    probs = torch.rand(2, 3, 4, 6).softmax(1)
    probs[0, :, 0, 0] = torch.tensor([0.995, 0.003, 0.002])  # one confident pixel
    logits = torch.randn(2, 1, 2, 3) * 3
    up = F.interpolate(logits, size=(4, 6), mode="bilinear", align_corners=False)
    rule = (torch.sigmoid(up[:, 0]) <= 0.5) & (probs.max(1).values < 0.99)
    expected = probs.clone()
    expected[:, 1][rule] = 1.0
    assert torch.equal(background_refinement(probs, logits, 1, 0.99), expected)


def test_vit_keys_go_through_the_attention_output_projection(tiny_clip_file):
    """MaskCLIP's ViT (``vit.py``, ``return_qkv``) applies ``out_proj`` to the key part of the last
    block's ``in_proj``: our keys equal that, computed from open_clip's own modules."""
    model = maskclip(tiny_clip_file)
    clip_model = model.backbone.visual
    images = torch.rand(1, 3, 64, 96)
    stash = {}
    block = clip_model.transformer.resblocks[-1]
    hook = block.ln_1.register_forward_hook(lambda m, i, o: stash.__setitem__("ln1", o))
    try:
        model.backbone(images, with_inter=False)
    finally:
        hook.remove()
    ln1 = stash["ln1"]
    ln1 = ln1 if ln1.shape[0] == 1 else ln1.transpose(0, 1)  # batch first
    k = F.linear(ln1, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)[1]
    expected = block.attn.out_proj(k[:, 1:])
    torch.testing.assert_close(model.features(images, keys=True).keys, expected, rtol=1e-5, atol=1e-5)


def test_mmseg_input_normalises_then_pads_with_zeros(tiny_clip_file):
    """``model.clip.input=mmseg``: ImageNet mean/std on the image, then zero padding to the patch
    size (mmseg's PatchEmbed ``padding='corner'``); ``clip``: padding first, then CLIP's own."""
    images = torch.rand(1, 3, 40, 70)
    seen = {}
    for mode in ("clip", "mmseg"):
        model = maskclip(tiny_clip_file, clip={"input": mode})
        patchify = model.backbone._patchify

        def capture(x, mode=mode, patchify=patchify):
            seen[mode] = x  # what the patch embedding receives
            return patchify(x)

        model.backbone._patchify = capture
        model.features(images)
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    clip_pad = F.pad(images, (0, 10, 0, 8))
    expected_clip = (clip_pad - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    expected_mmseg = F.pad((images - IMAGENET_MEAN) / IMAGENET_STD, (0, 10, 0, 8))
    torch.testing.assert_close(seen["clip"], expected_clip)
    torch.testing.assert_close(seen["mmseg"], expected_mmseg)
    assert (seen["mmseg"][..., 40:, :] == 0).all() and (seen["clip"][..., 40:, :] != 0).all()


@pytest.mark.parametrize("name", ["clip_dinoiser", "dino_maskclip"])
def test_models_that_read_vit_blocks_refuse_a_resnet_naming_the_key(tiny_rn_file, name):
    with pytest.raises(ConfigError, match=r"^model\.clip\.name=.* is a ResNet tower: model\.name=" + name):
        build_model({"name": name, "clip": {"name": tiny_rn_file[0], "pretrained": tiny_rn_file[1]}})


# --------------------------------------------------------------------------- whole-image inference


def mmseg_whole(segmenter: nn.Module, resized: torch.Tensor, ori_shape: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """mmseg 1.x's own ``EncoderDecoder`` with ``test_cfg=dict(mode='whole')`` around ``segmenter``
    (its decode head returns the segmenter's scores): ``inference`` then ``postprocess_result``."""
    from mmengine.config import ConfigDict
    from mmseg.models.decode_heads.decode_head import BaseDecodeHead
    from mmseg.models.segmentors import EncoderDecoder
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    class Image(nn.Module):
        def forward(self, x):
            return [x]

    class Scores(BaseDecodeHead):
        def __init__(self, model, **kwargs):
            super().__init__(in_channels=3, channels=1, num_classes=len(NAMES), **kwargs)
            self.model = model

        def forward(self, inputs):
            m = self.model
            return m.decode(m.features(inputs[0], keys=m.decoding.ks_thresh > 0), replace(m.decoding, scores="logits"))

    MODELS.register_module("_TestImage", module=Image, force=True)
    MODELS.register_module("_TestScores", module=Scores, force=True)
    seg = EncoderDecoder(backbone=dict(type="_TestImage"), decode_head=dict(type="_TestScores", model=segmenter),
                         test_cfg=ConfigDict(mode="whole"))
    h, w = resized.shape[-2:]
    meta = {"ori_shape": ori_shape, "img_shape": (h, w), "pad_shape": (h, w), "padding_size": [0, 0, 0, 0]}
    logits = seg.inference(resized[None], [meta])
    sample = seg.postprocess_result(logits, [SegDataSample(metainfo=meta)])[0]
    return sample.pred_sem_seg.data[0], sample.seg_logits.data


@pytest.mark.parametrize("tower", ["vit", "resnet"])
@pytest.mark.parametrize("ks", [0.0, 0.9])
def test_whole_mode_equals_mmsegs_whole_inference(tiny_clip_file, tiny_rn_file, tower, ks):
    model = maskclip(tiny_clip_file if tower == "vit" else tiny_rn_file, clip={"input": "mmseg"},
                     maskclip={"ks_thresh": ks})
    image = random_image(75, 100, seed=4)
    slide = SlideConfig(mode="whole", scale=(200, 90), scores="logits")
    (ours,) = image_outputs(model, [image], slide, "fp32")
    labels, scores = mmseg_whole(model, to_tensor(resize_keep_ratio(image, slide.scale)), image.shape[:2])
    assert ours.shape == scores.shape == (len(NAMES), 75, 100)
    torch.testing.assert_close(ours, scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.argmax(0), labels)
    assert model.decoding.scores == "probs"  # the protocol's scores were set for the call only


def test_whole_mode_runs_each_image_at_once_and_slide_logits_average_scores(tiny_clip_file):
    """A whole image is one window (its scores resized to it, then to the original size); slide
    mode with ``scores=logits`` averages the windows' scores as mmseg averages a head's logits."""
    model = maskclip(tiny_clip_file)
    image = random_image(60, 90, seed=2)
    whole = SlideConfig(mode="whole", scale=(90, 60), scores="logits")
    (out,) = image_outputs(model, [image], whole, "fp32")
    x = to_tensor(resize_keep_ratio(image, whole.scale))[None]
    scores = model.decode(model.features(x), replace(model.decoding, scores="logits"))
    expected = F.interpolate(F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False),
                             size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    slide = SlideConfig(mode="slide", scale=(90, 60), crop=(48, 48), stride=(32, 32), scores="logits")
    (avg,) = image_outputs(model, [image], slide, "fp32")
    probs = image_outputs(model, [image], replace(slide, scores="probs"), "fp32")[0]
    assert not torch.allclose(avg.softmax(0), probs, atol=1e-3)  # averaging scores is not averaging probabilities
    assert (avg < 0).any()  # scores (100 x cosine), not probabilities


# --------------------------------------------------------------------------- protocol presets


def test_protocol_maskclip_reads_maskclips_class_names_and_templates(tiny_rn_file, tmp_path):
    from clip_dinoiser.data.benchmarks import BENCHMARKS
    from clip_dinoiser.engine.evaluation.evaluate import Evaluator
    from clip_dinoiser.models.text import maskclip_templates
    from clip_dinoiser.vocabulary import read_vocabulary_file

    voc20 = read_vocabulary_file(BENCHMARKS["voc20"].vocabulary_in("maskclip"))
    # tools/maskclip_utils/prompt_engineering.py voc_classes
    assert [s[0] for s in voc20] == [
        "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table", "dog",
        "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor"]
    # no set (data.vocabulary_set null) and ours: our class names
    assert BENCHMARKS["voc20"].vocabulary_in(None) == BENCHMARKS["voc20"].vocabulary_in("clip_dinoiser")
    assert read_vocabulary_file(BENCHMARKS["voc20"].vocabulary_in(None))[0][0] == "aeroplane"
    # coco_object has no MaskCLIP names: ours; an unknown set is one line naming the key
    assert BENCHMARKS["coco_object"].vocabulary_in("maskclip") == BENCHMARKS["coco_object"].vocabulary_file
    with pytest.raises(ConfigError, match="data.vocabulary_set=bogus: unknown"):
        BENCHMARKS["voc20"].vocabulary_in("bogus")
    templates = maskclip_templates()
    assert len(templates) == 85 and templates[-1] == "this is one {} in the scene."
    model = maskclip(tiny_rn_file)
    setting = Evaluator(slide=SlideConfig(scores="logits"), vocabulary_set="maskclip").setting(
        model, BENCHMARKS["voc20"])
    assert setting.classes.names[0] == "airplane" and setting.decoding.scores == "logits"
    own = tmp_path / "names.txt"  # data.vocabulary: a file of the user's, over any set
    own.write_text("".join(f"thing{i}\n" for i in range(20)))
    setting = Evaluator(vocabulary_set="maskclip").setting(model, BENCHMARKS["voc20"], vocabulary=str(own))
    assert setting.classes.names == [f"thing{i}" for i in range(20)]


def test_load_applies_a_protocol_under_the_callers_own_settings(tiny_rn_file):
    import clip_dinoiser

    seg = clip_dinoiser.load("maskclip", device="cpu", protocol="maskclip", clip={"name": tiny_rn_file[0],
                             "pretrained": tiny_rn_file[1]}, text_cache=None, slide={"scale": [300, 100]})
    assert seg.slide.mode == "whole" and seg.slide.scale == (300, 100) and seg.slide.scores == "logits"
    assert seg.model.backbone.input == "mmseg"
    assert seg.model.text.templates == clip_dinoiser.models.text.maskclip_templates()
    result = seg.segment(random_image(50, 70, seed=1), ["cat", "dog"])
    torch.testing.assert_close(torch.from_numpy(result.probs).sum(0), torch.ones(50, 70))  # softmax of the scores
    with pytest.raises(ConfigError, match="protocol=bogus: unknown test protocol"):
        clip_dinoiser.load("maskclip", device="cpu", protocol="bogus")


def test_published_numbers_only_under_their_own_protocol():
    from clip_dinoiser.data.benchmarks import BENCHMARKS, reference_for

    rn50 = {"name": "maskclip", "clip": {"name": "RN50", "pretrained": "openai"}, "maskclip": {}}
    assert reference_for(BENCHMARKS["voc20"], rn50, "clip_dinoiser").paper_miou is None
    ours = reference_for(BENCHMARKS["voc20"], {"name": "clip_dinoiser"}, "clip_dinoiser")
    assert ours.paper_miou == 80.9  # our protocol: CLIP-DINOiser's Table 2, for CLIP-DINOiser only
    theirs = reference_for(BENCHMARKS["voc20"], rn50, "maskclip")
    assert theirs.paper_miou == 41.5 and "MaskCLIP" in theirs.title
    smoothed = {**rn50, "maskclip": {"ks_thresh": 1.0}}  # not the published setting
    assert reference_for(BENCHMARKS["voc20"], smoothed, "maskclip").paper_miou is None
    assert reference_for(BENCHMARKS["ade20k"], rn50, "maskclip").paper_miou is None  # not published
    target = {"name": "target", "clip": {"name": "ViT-B-16", "pretrained": "openai"}}
    assert reference_for(BENCHMARKS["context59"], target, "clip_dinoiser").paper_miou is None
    assert reference_for(BENCHMARKS["context59"], target, "maskclip").paper_miou == 31.1
    zs = {"name": "target", "clip": {"name": "RN50", "pretrained": "openai"}}
    assert reference_for(BENCHMARKS["voc20"], zs, "maskclip", zero_shot=True).paper_miou == 87.8
    from clip_dinoiser.config import CLIPConfig, ModelConfig

    as_tools_pass_it = ModelConfig(name="maskclip", clip=CLIPConfig(name="RN50", pretrained="openai"))
    assert reference_for(BENCHMARKS["voc20"], as_tools_pass_it, "maskclip").paper_miou == 41.5


@pytest.mark.slow
def test_eval_tool_under_protocol_maskclip_scores_whole_images(tmp_path, tiny_rn_file):
    """The preset through the command line: whole images, MaskCLIP's names, the scores resized;
    the same mIoU as the evaluator called with those settings directly."""
    import json
    import subprocess
    import sys

    from .synthetic_data import make_benchmark
    from .test_maskclip_plus import ROOT

    root = make_benchmark(str(tmp_path / "data"), "voc20", n=2)
    r = subprocess.run([sys.executable, f"{ROOT}/tools/eval.py", "model=maskclip", "protocol=maskclip", "data=voc20",
                        f"data.root={root}", f"model.clip.name={tiny_rn_file[0]}",
                        f"model.clip.pretrained={tiny_rn_file[1]}", "model.text_cache=null", "slide.scale=[120,60]",
                        "device=cpu", "num_workers=0", "output=out"], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                            "HOME": str(tmp_path)}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    reported = json.loads((tmp_path / "out" / "results.json").read_text())["voc20"]
    assert "airplane" in reported["class_IoU"]  # MaskCLIP's class names
    from clip_dinoiser.data.benchmarks import BENCHMARKS
    from clip_dinoiser.engine.evaluation.evaluate import Evaluator

    model = maskclip(tiny_rn_file, clip={"input": "mmseg"}, maskclip={"templates": "maskclip85"})
    slide = SlideConfig(mode="whole", scale=(120, 60), scores="logits")
    with Evaluator(slide=slide, num_workers=0, vocabulary_set="maskclip", progress=False) as ev:
        direct = ev.evaluate(model, BENCHMARKS["voc20"], root)
    assert reported["mIoU"] == pytest.approx(direct.miou, abs=1e-9)
    assert direct.windows == 2  # one per image


def test_slide_per_benchmark_entries_are_checked_under_their_full_key():
    with pytest.raises(ConfigError, match=r"slide\.per_benchmark\.context59\.scale\[0\]=-1"):
        SlideConfig(per_benchmark={"context59": {"scale": [-1, 5]}}).for_benchmark("context59")
    with pytest.raises(ConfigError, match=r"slide\.per_benchmark\.voc\.bogus: unknown key"):
        SlideConfig(per_benchmark={"voc": {"bogus": 1}}).for_benchmark("voc")
    assert SlideConfig(per_benchmark={"voc": {"mode": "whole"}}).for_benchmark("voc").mode == "whole"
    assert SlideConfig(per_benchmark={"voc": {"mode": "whole"}}).for_benchmark("ade20k").mode == "slide"
    assert np.array_equal(SlideConfig().for_benchmark("voc").scale, (2048, 448))


def test_robustness_table_keeps_towers_and_benchmarks_apart(tmp_path):
    """MaskCLIP's robustness comparison: ViT-B/16 against R-50 on the same corruptions, here on two
    benchmarks. A row per (tower, benchmark, corruption), its clean reference that of the same
    tower and benchmark; every cell the run's own number (no run overwrites another's); a line per
    tower and corruption in the plot."""
    from PIL import Image

    from clip_dinoiser.engine.reporting.plots import plot_robustness
    from clip_dinoiser.engine.reporting.summary import Run, robustness_table

    runs, expected = [], {}
    for t, tower in enumerate(("RN50", "ViT-B-16")):
        for b, bench in enumerate(("voc20", "context59")):
            for corruption, severity in ((None, 1), ("gaussian_noise", 1), ("gaussian_noise", 5), ("spatter", 3)):
                miou = 10 * t + b + (0 if corruption is None else severity / 10 + (corruption == "spatter") / 100)
                settings = {"model.name": "maskclip", "model.clip.name": tower, "data.name": bench,
                            "data.corruption": corruption, "data.severity": severity}
                runs.append(Run(f"run{len(runs)}", "eval", settings, {bench: {"mIoU": miou, "paper_mIoU": None}}))
                expected[(tower, bench, corruption, severity)] = miou
    table = robustness_table(runs)
    assert table.columns[:4] == ["model", "tower", "benchmark", "corruption"]
    assert len(table.rows) == 2 * 2 * 2
    for row in table.rows:
        key = (row["tower"], row["benchmark"])
        assert row["clean"] == expected[(*key, None, 1)]
        for s in range(1, 6):
            assert row.get(f"severity {s}") == expected.get((*key, row["corruption"], s))
    with open(tmp_path / "rob.png", "wb") as f:
        plot_robustness(table, f)
    assert Image.open(tmp_path / "rob.png").size[0] > 600


def test_robustness_rows_keep_other_settings_apart_and_a_tower_column_only_for_several_towers():
    """Runs that differ in another setting (here key smoothing) are rows of their own, each with its
    own clean reference; with one tower there is no tower column."""
    from clip_dinoiser.engine.reporting.summary import Run, robustness_table

    runs = []
    for ks, base in ((0.0, 10.0), (0.5, 20.0)):
        for corruption, severity, drop in ((None, 1, 0.0), ("spatter", 2, 1.0), ("spatter", 4, 3.0)):
            settings = {"model.name": "maskclip", "model.clip.name": "RN50", "data.name": "voc20",
                        "data.corruption": corruption, "data.severity": severity, "model.maskclip.ks_thresh": ks}
            runs.append(Run(f"run{len(runs)}", "eval", settings, {"voc20": {"mIoU": base - drop, "paper_mIoU": None}}))
    table = robustness_table(runs)
    assert "tower" not in table.columns and "model.maskclip.ks_thresh" in table.columns
    rows = {row["model.maskclip.ks_thresh"]: row for row in table.rows}
    assert len(table.rows) == 2
    for ks, base in ((0.0, 10.0), (0.5, 20.0)):
        row = rows[ks]
        assert (row["clean"], row["severity 2"], row["severity 4"]) == (base, base - 1.0, base - 3.0)
        assert row["mean"] is None  # severities 1, 3 and 5 not run


def test_mmseg_vit_runs_the_tower_as_maskclips_port(tiny_clip_file, tiny_rn_file):
    """``model.clip.mmseg_vit``: every LayerNorm of the image tower with eps 1e-6 and the MLPs'
    activation exact GELU (MaskCLIP's ``norm_cfg=dict(type='LN', eps=1e-6)``, ``act_cfg=GELU``);
    the text tower and the weights untouched; the output equal to a hand-written block with them."""
    default, port = maskclip(tiny_clip_file), maskclip(tiny_clip_file, clip={"mmseg_vit": True})
    norms = [m for m in port.backbone.visual.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)
    assert all(type(b.mlp.gelu) is nn.GELU and b.mlp.gelu.approximate == "none"
               for b in port.backbone.visual.transformer.resblocks)
    assert all(torch.equal(a, b) for a, b in zip(default.backbone.state_dict().values(),
                                                 port.backbone.state_dict().values()))
    assert torch.equal(default.text.current.embeddings, port.text.current.embeddings)
    images = torch.rand(1, 3, 64, 80)
    block, x = port.backbone.visual.transformer.resblocks[0], torch.randn(1, 21, 64)
    ln = lambda t, m: F.layer_norm(t, t.shape[-1:], m.weight, m.bias, 1e-6)  # noqa: E731
    q, k, v = F.linear(ln(x, block.ln_1), block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, -1)
    heads = lambda t: t.view(1, 21, block.attn.num_heads, -1).transpose(1, 2)  # noqa: E731
    a = F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(1, 21, 64)
    y = x + block.attn.out_proj(a)
    mlp = block.mlp
    expected = y + mlp.c_proj(F.gelu(mlp.c_fc(ln(y, block.ln_2))))
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(default.features(images).dense, port.features(images).dense, atol=1e-6)
    rn = maskclip(tiny_rn_file, clip={"mmseg_vit": True})  # a ResNet: nothing to change
    torch.testing.assert_close(rn.features(images).dense, maskclip(tiny_rn_file).features(images).dense)


def test_openais_tags_load_with_the_activation_they_were_trained_with(tiny_clip_file):
    """OpenAI's weights were trained with QuickGELU; open_clip >= 2.26 builds ``RN50`` /
    ``ViT-B-16`` with exact GELU and only warns. The tag's own pretrained config says which
    (open_clip's ``quick_gelu`` flag), also when the weights come from a local copy."""
    from clip_dinoiser.models.backbone import open_clip_from_state_dict, trained_with_quick_gelu

    assert trained_with_quick_gelu("RN50", "openai") and trained_with_quick_gelu("ViT-B-16", "openai")
    assert trained_with_quick_gelu("RN50x16", "openai")
    assert not trained_with_quick_gelu("ViT-B-16", "laion2b_s34b_b88k") and not trained_with_quick_gelu("RN50", None)
    model = open_clip_from_state_dict(tiny_clip_file[0], tiny_clip_file[1], quick_gelu=True)
    acts = [type(b.mlp.gelu).__name__ for b in [*model.visual.transformer.resblocks, *model.transformer.resblocks]]
    assert acts and set(acts) == {"QuickGELU"}
    plain = open_clip_from_state_dict(tiny_clip_file[0], tiny_clip_file[1])
    assert {type(b.mlp.gelu).__name__ for b in plain.visual.transformer.resblocks} == {"GELU"}
