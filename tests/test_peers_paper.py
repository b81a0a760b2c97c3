"""SCLIP, NACLIP and ClearCLIP written down once: every constant of each method and of its test protocol,
with its source, checked against what the tools compose (hydra, as ``tools/eval.py`` does) and build.

Nothing here reads a configuration value to find out what to expect: the expected values are literals.
``SC`` is github.com/wangf3014/SCLIP (commit b56bd30), ``NA`` github.com/sinahmr/NACLIP (0cac3a6), ``CC``
github.com/mc-lan/ClearCLIP (ad68a40).
"""

from __future__ import annotations

import functools
import os
from types import MappingProxyType

import pytest
import yaml

from clip_dinoiser.config import METHODS, EvalConfig, ModelConfig, parse, plain
from clip_dinoiser.data.benchmarks import BENCHMARKS, reference_for
from clip_dinoiser.protocols import PUBLISHED, published_miou

from .test_paper import compose_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OURS = ("voc", "context", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k")

PEERS = MappingProxyType({
    "sclip": {
        "attention": ("csa", "SC clip/model.py custom_attn(csa=True): softmax(q q^T s) + softmax(k k^T s)"),
        "arch": ("vanilla", "SC clip/model.py VisionTransformer.forward: x + custom_attn, x + mlp(ln_2(x))"),
        "weights": (("ViT-B-16", "openai"), "SC configs/base_config.py clip_path='ViT-B/16' (OpenAI's clip.load)"),
        "logit_scale": (40.0, "SC clip_segmentor.py CLIPForSegmentation(logit_scale=40)"),
        "logit_scale.bench": ({"voc": 65.0, "context": 50.0, "coco_object": 50.0},
                              "SC configs/cfg_voc21.py logit_scale=65, cfg_context60.py / cfg_coco_object.py 50"),
        "prob_thd.bench": ({"voc": 0.1, "context": 0.1, "coco_object": 0.1},
                           "SC configs/cfg_voc21.py, cfg_context60.py, cfg_coco_object.py prob_thd=0.1"),
        "area_thd.bench": ({"voc": 0.1}, "SC configs/cfg_voc21.py area_thd=0.1"),
        "pamr": (0, "SC clip_segmentor.py pamr_steps=0 (off by default)"),
        "slide": (((224, 224), (112, 112)), "SC clip_segmentor.py slide_stride=112, slide_crop=224"),
        "scale": ({"cityscapes": (2048, 560), "coco_stuff": (2048, 448), "other": (2048, 336)},
                  "SC configs/cfg_*.py test_pipeline Resize(scale=..., keep_ratio=True)"),
        "whole": ((), "SC configs: slide_crop never 0"),
        "mean_std": (((122.771, 116.746, 104.094), (68.501, 66.632, 70.323)),
                     "SC clip_segmentor.py SegDataPreProcessor(mean=..., std=..., rgb_to_bgr=True)"),
        "input": ("floor", "SC clip_segmentor.py forward_feature: grid img // patch_size, no padding"),
        "pos_resize": ("dino", "SC clip/model.py interpolate_pos_encoding: scale_factor (w0 + 0.1) / sqrt(N)"),
        "templates": (80, "SC prompts/imagenet_template.py openai_imagenet_template"),
        "synonyms": ("max", "SC clip_segmentor.py get_cls_idx, postprocess_result: max over a class's names"),
        "vocabulary_set": ("sclip", "SC configs/cls_*.txt"),
    },
    "naclip": {
        "attention": ("naclip", "NA naclip.py NACLIP(attn_strategy='naclip'): k k^T s + Gaussian window"),
        "arch": ("reduced", "NA naclip.py NACLIP(arch='reduced'): the last block's attention output only"),
        "gaussian_std": (5.0, "NA naclip.py NACLIP(gaussian_std=5.); README: test_all.sh reduced naclip 5 on"),
        "weights": (("ViT-B-16", "openai"), "NA configs/base_config.py clip_path='ViT-B/16'"),
        "logit_scale": (40.0, "NA naclip.py NACLIP(logit_scale=40)"),
        "logit_scale.bench": ({}, "NA configs/cfg_*.py: logit_scale never set"),
        "prob_thd.bench": ({"voc": 0.1, "context": 0.1, "coco_object": 0.1},
                           "NA configs/cfg_voc21.py, cfg_context60.py, cfg_coco_object.py prob_thd=0.1"),
        "area_thd.bench": ({}, "NA naclip.py: no area_thd"),
        "pamr": ((10, (8, 16)), "NA naclip.py NACLIP(pamr_steps=10, pamr_stride=(8, 16)); eval.py --pamr on: 10"),
        "slide": (((224, 224), (112, 112)), "NA naclip.py slide_stride=112, slide_crop=224"),
        "scale": ({"cityscapes": (2048, 560), "other": (2048, 336)},
                  "NA configs/cfg_*.py Resize(scale=(2048, 336)); cfg_city_scapes.py (2048, 560)"),
        "whole": (("voc", "voc20"), "NA configs/cfg_voc21.py, cfg_voc20.py slide_crop=0 (the image at once)"),
        "mean_std": (((122.771, 116.746, 104.094), (68.501, 66.632, 70.323)),
                     "NA naclip.py SegDataPreProcessor(mean=..., std=..., rgb_to_bgr=True)"),
        "input": ("floor", "NA naclip.py forward_feature: grid img // patch_size, no padding"),
        "pos_resize": ("dino", "NA clip/model.py interpolate_pos_encoding: scale_factor (w0 + 0.1) / sqrt(N)"),
        "templates": (80, "NA prompts/imagenet_template.py openai_imagenet_template"),
        "synonyms": ("max", "NA naclip.py get_cls_idx, postprocess_result"),
        "vocabulary_set": ("sclip", "NA configs/cls_*.txt (byte for byte SCLIP's)"),
    },
    "clearclip": {
        "attention": ("qq", "CC open_clip/transformer.py custom_attn(model_type='ClearCLIP'): softmax(q q^T s)"),
        "arch": ("reduced", "CC open_clip/transformer.py forward(ignore_residual=True): no residual, no FFN"),
        "weights": (("ViT-B-16", "openai"), "CC configs/base_config.py clip_type='CLIP', vit_type='ViT-B/16'"),
        "logit_scale": (50.0, "CC clearclip_segmentor.py ClearCLIPSegmentation(logit_scale=50)"),
        "logit_scale.bench": ({}, "CC configs/cfg_*.py: logit_scale never set"),
        "prob_thd.bench": ({"voc": 0.5, "context": 0.15, "coco_object": 0.4},
                           "CC configs/cfg_voc21.py prob_thd=0.5, cfg_context60.py 0.15, cfg_coco_object.py 0.4"),
        "area_thd.bench": ({}, "CC clearclip_segmentor.py: no area_thd"),
        "pamr": (0, "CC clearclip_segmentor.py: no PAMR"),
        "slide": (((448, 448), (224, 224)), "CC clearclip_segmentor.py slide_stride=224, slide_crop=448"),
        "slide.cityscapes": (((224, 224), (224, 224)), "CC configs/cfg_city_scapes.py slide_crop=224 (stride 224)"),
        "scale": ({"other": (2048, 448)}, "CC configs/cfg_*.py Resize(scale=(2048, 448), keep_ratio=True)"),
        "whole": ((), "CC configs: slide_crop never 0"),
        "mean_std": (((122.771, 116.746, 104.094), (68.501, 66.632, 70.323)),
                     "CC clearclip_segmentor.py SegDataPreProcessor(mean=..., std=..., bgr_to_rgb=True)"),
        "input": ("centre", "CC clearclip_segmentor.py forward_slide: compute_padsize (centred), mask cutting"),
        "pos_resize": ("dino", "CC open_clip/transformer.py interpolate_pos_encoding: scale_factor (w0 + 0.1)"),
        "templates": (80, "CC prompts/imagenet_template.py openai_imagenet_template"),
        "synonyms": ("max", "CC clearclip_segmentor.py get_cls_idx (split(',')), postprocess_result"),
        "vocabulary_set": ("clearclip", "CC configs/cls_*.txt"),
    },
})

PUBLISHED_NUMBERS = MappingProxyType({
    "sclip": ({"voc": 59.63, "context": 31.74, "coco_object": 33.52, "voc20": 81.54, "context59": 34.46,
               "coco_stuff": 22.77, "cityscapes": 32.34, "ade20k": 16.45}, "SC README.md 'Results'"),
    "naclip": ({"voc": 64.07, "context": 34.99, "coco_object": 36.19, "voc20": 83.03, "context59": 38.35,
                "coco_stuff": 25.69, "cityscapes": 38.27, "ade20k": 19.05}, "NA README.md 'Results' (avg 42.46)"),
    "clearclip": ({"voc20": 80.9, "context59": 35.9, "coco_stuff": 23.9, "cityscapes": 30.0, "ade20k": 16.7},
                  "CC README.md assets/results.png (appendix Table 2, CLIP ViT-B/16 + ClearCLIP)"),
    "clearclip.laion2b": ({"voc20": 81.4, "context59": 34.1, "coco_stuff": 23.1, "cityscapes": 31.8, "ade20k": 18.9},
                          "CC README.md assets/results.png (OpenCLIP ViT-B/16 + ClearCLIP)"),
})


def test_table_entries_cite_a_source():
    prefix = {"sclip": "SC", "naclip": "NA", "clearclip": "CC"}
    for name, rows in PEERS.items():
        assert all(src.startswith(prefix[name]) for _, src in rows.values())
    assert all(src[:2] in ("SC", "NA", "CC") for _, src in PUBLISHED_NUMBERS.values())


def peer(name: str, key: str):
    return PEERS[name][key][0]


@functools.cache
def _compose(*overrides: str):
    return compose_tool("eval", *overrides)


def composed(name: str, protocol: str | None = None) -> EvalConfig:
    """tools/eval.py's settings for ``model=name protocol=protocol`` (each call its own objects)."""
    return parse(EvalConfig, _compose(f"model={name}", f"protocol={protocol or name}"), "")


@pytest.mark.parametrize("name", list(PEERS))
def test_model_group_composes_each_methods_settings(name):
    m = parse(EvalConfig, compose_tool("eval", f"model={name}"), "").model
    assert (m.last_block.attention, m.last_block.arch) == (peer(name, "attention"), peer(name, "arch"))
    if name == "naclip":
        assert m.last_block.gaussian_std == peer(name, "gaussian_std")
    assert (m.clip.name, m.clip.pretrained) == peer(name, "weights")
    assert m.maskclip.temperature == peer(name, "logit_scale")
    assert m.maskclip.synonyms == peer(name, "synonyms") and m.clip.pos_resize == peer(name, "pos_resize")
    pamr = peer(name, "pamr")
    assert (m.post.pamr_steps, tuple(m.post.pamr_dilations)) == (pamr if pamr else (0, (8, 16)))
    assert (m.post.prob_thd, m.post.area_thd, m.bg_refine) == (0.0, 0.0, False)
    from clip_dinoiser.models.text import TEMPLATE_SETS

    assert len(TEMPLATE_SETS[m.maskclip.templates]()) == peer(name, "templates")
    assert m.clip.input == "clip"  # the input handling is the protocol's


@pytest.mark.parametrize("name", list(PEERS))
def test_model_yaml_holds_config_methods(name):
    """configs/model/<name>.yaml (hydra) and config.METHODS (the Python API, build_model) agree."""
    with open(os.path.join(ROOT, "configs", "model", f"{name}.yaml")) as f:
        node = {k: v for k, v in yaml.safe_load(f).items() if k not in ("defaults", "name")}
    assert node == METHODS[name]
    from clip_dinoiser.models.build import model_config

    built = model_config({"name": name, "text_cache": None})  # build_model({"name": ...}) gets the same
    assert built == parse(ModelConfig, {**METHODS[name], "name": name, "text_cache": None}, "model")


@pytest.mark.parametrize("name", list(PEERS))
def test_protocol_composes_each_methods_test_settings(name):
    s = composed(name)
    assert s.protocol == name and s.slide.scores == "logits"
    assert s.model.clip.input == peer(name, "input")
    for bench in _OURS:
        slide = s.slide.for_benchmark(bench)
        scales = peer(name, "scale")
        assert tuple(slide.scale) == scales.get(bench, scales["other"])
        crop, stride = peer(name, "slide.cityscapes") if bench == "cityscapes" and name == "clearclip" else \
            peer(name, "slide")
        assert (tuple(slide.crop), tuple(slide.stride)) == (crop, stride)
        assert slide.mode == ("whole" if bench in peer(name, "whole") else "slide")
    from clip_dinoiser.models.maskclip import Decoding

    decoding = Decoding.from_config(s.model)
    for bench in _OURS:
        d = decoding.for_benchmark(bench)
        assert d.temperature == peer(name, "logit_scale.bench").get(bench, peer(name, "logit_scale"))
        assert d.prob_thd == peer(name, "prob_thd.bench").get(bench, 0.0)
        assert d.area_thd == peer(name, "area_thd.bench").get(bench, 0.0)
    vocabulary_set = s.data.vocabulary_set or __import__("clip_dinoiser.protocols", fromlist=["x"]).get_protocol(
        name).vocabulary_set
    assert vocabulary_set == peer(name, "vocabulary_set")
    from clip_dinoiser.models.backbone import PEERS_MEAN, PEERS_STD

    mean, std = peer(name, "mean_std")
    assert PEERS_MEAN == tuple(v / 255 for v in mean) and PEERS_STD == tuple(v / 255 for v in std)


def test_every_model_runs_under_every_protocol():
    """The presets set only protocol keys: another model under them keeps its own method."""
    for protocol in ("clip_dinoiser", "maskclip", *PEERS):
        for name in ("maskclip", "naclip"):
            m = composed(name, protocol).model
            assert m.name == name
            if name in PEERS:
                assert m.last_block.attention == peer(name, "attention") and m.post.pamr_steps == 10
    m = composed("clip_dinoiser", "sclip").model
    assert (m.name, m.last_block.attention, m.clip.pretrained, m.clip.input) == (
        "clip_dinoiser", "value", "laion2b_s34b_b88k", "floor")


def test_vocabulary_files_are_the_authors_class_lists():
    sizes = {"sclip": {"voc": (21, 56), "voc20": (20, 30), "coco_object": (81, 113), "context": (60, 60)},
             "clearclip": {"voc": (21, 21), "voc20": (20, 20), "coco_object": (81, 81), "context": (60, 60)}}
    from clip_dinoiser.models.text import read_vocabulary_file

    for vset, expect in sizes.items():
        for bench, (classes, names) in expect.items():
            vocab = read_vocabulary_file(BENCHMARKS[bench].vocabulary_in(vset))
            assert (len(vocab), sum(len(v) for v in vocab)) == (classes, names)
    voc = read_vocabulary_file(BENCHMARKS["voc"].vocabulary_in("sclip"))
    assert voc[0][:3] == ("sky", "wall", "tree") and voc[-1][0] == "television monitor"  # SC configs/cls_voc21.txt


def test_published_numbers_are_the_authors():
    def table(method, pretrained="openai"):
        return {p.benchmark: p.miou for p in PUBLISHED if p.model == method and p.pretrained == pretrained}

    for name in PEERS:
        assert table(name) == PUBLISHED_NUMBERS[name][0]
    assert table("clearclip", "laion2b_s34b_b88k") == PUBLISHED_NUMBERS["clearclip.laion2b"][0]
    # NA README's average, 42.46, of its unrounded numbers: the rounded ones average 42.455
    assert abs(sum(PUBLISHED_NUMBERS["naclip"][0].values()) / 8 - 42.46) <= 0.005 + 1e-9


def test_published_numbers_print_only_under_the_methods_own_protocol_and_settings():
    for name in PEERS:
        model = composed(name).model
        voc20 = PUBLISHED_NUMBERS[name][0]["voc20"]
        assert reference_for(BENCHMARKS["voc20"], model, name).paper_miou == voc20
        assert reference_for(BENCHMARKS["voc20"], model, "clip_dinoiser").paper_miou is None
        other = "naclip" if name == "sclip" else "sclip"
        assert reference_for(BENCHMARKS["voc20"], composed(name, other).model, other).paper_miou is None
    m = composed("naclip").model
    assert published_miou("naclip", plain(m), "voc").miou == 64.07
    m.post.pamr_steps = 0  # NACLIP's numbers are with PAMR
    assert published_miou("naclip", plain(m), "voc") is None
    m = composed("sclip").model
    m.last_block.attention = "qq"
    assert published_miou("sclip", plain(m), "voc20") is None
    laion = parse(EvalConfig, compose_tool("eval", "model=clearclip", "protocol=clearclip",
                                           "model.clip.pretrained=laion2b_s34b_b88k"), "").model
    assert published_miou("clearclip", plain(laion), "ade20k").miou == 18.9
    assert published_miou("clearclip", plain(laion), "voc") is None  # no source we could check


def test_readme_table_is_the_published_one():
    """README's table of the peers' published numbers is ``protocols.PUBLISHED``'s."""
    with open(os.path.join(ROOT, "README.md")) as f:
        rows = {line.split("|")[1].strip(): line.split("|")[2:10] for line in f
                if line.startswith(("| SCLIP |", "| NACLIP |", "| ClearCLIP |"))}
    for name, title in (("sclip", "SCLIP"), ("naclip", "NACLIP"), ("clearclip", "ClearCLIP")):
        cells = [c.strip() for c in rows[title]]
        assert {b: float(c) for b, c in zip(_OURS, cells) if c != "-"} == PUBLISHED_NUMBERS[name][0]


# ----------------------------------------------------------------------------- ProxyCLIP
# ``PC`` is github.com/mc-lan/ProxyCLIP (commit e7b767f). Its README prints no table and the paper's main table
# (arXiv 2408.04883, Table 1) could not be checked from a source here: no published numbers are printed for it.
PROXYCLIP = MappingProxyType({
    "proxy": (("vit_base_patch8_224", "vit_base_patch8_224.dino"),
              "PC proxyclip_segmentor.py vfm_model='dino': torch.hub.load('facebookresearch/dino:main', 'dino_vitb8')"),
    "proxy_features": ("norm(last block)", "PC proxyclip_segmentor.py ex_feats = get_intermediate_layers(x)[0][:, 1:]"),
    "beta": (1.2, "PC proxyclip_segmentor.py ProxyCLIPSegmentation(beta=1.2); open_clip/transformer.py custom_attn"),
    "gamma": (3.0, "PC proxyclip_segmentor.py ProxyCLIPSegmentation(gamma=3.0)"),
    "pad_to": (56, "PC proxyclip_segmentor.py forward_slide: compute_padsize(H, W, 56)"),
    "weights": (("ViT-B-16", "openai"), "PC configs/base_config.py clip_type='openai', model_type='ViT-B/16'"),
    "logit_scale": (40.0, "PC proxyclip_segmentor.py ProxyCLIPSegmentation(logit_scale=40)"),
    "prob_thd.bench": ({"voc": 0.2, "context": 0.15, "coco_object": 0.25},
                       "PC configs/cfg_voc21.py prob_thd=0.2, cfg_context60.py 0.15, cfg_coco_object.py 0.25"),
    "slide": (((336, 336), (112, 112)), "PC proxyclip_segmentor.py slide_stride=112, slide_crop=336"),
    "slide.cityscapes": (((224, 224), (112, 112)), "PC configs/cfg_city_scapes.py slide_stride=112, slide_crop=224"),
    "scale": ({"cityscapes": (2048, 448), "ade20k": (2048, 448), "other": (2048, 336)},
              "PC configs/cfg_*.py Resize(scale=(2048, 336)); cfg_city_scapes.py, cfg_ade20k.py (2048, 448)"),
    "mean_std": (((122.771, 116.746, 104.094), (68.501, 66.632, 70.323)),
                 "PC proxyclip_segmentor.py SegDataPreProcessor(mean=..., std=..., bgr_to_rgb=True)"),
    "input": ("floor", "PC proxyclip_segmentor.py forward_feature: CLIP's grid img // patch_size after the padding"),
    "pos_resize": ("dino", "PC open_clip/transformer.py interpolate_pos_encoding: scale_factor (w0 + 0.1) / sqrt(N)"),
    "synonyms": ("max", "PC proxyclip_segmentor.py get_cls_idx (split('; ')), postprocess_result"),
    "vocabulary_set": ("proxyclip", "PC configs/cls_*.txt"),
    "pamr": (0, "PC proxyclip_segmentor.py: no PAMR"),
})


def test_proxyclip_entries_cite_a_source():
    assert all(src.startswith("PC ") for _, src in PROXYCLIP.values())


def test_proxyclip_composes_its_settings():
    m = parse(EvalConfig, compose_tool("eval", "model=proxyclip"), "").model
    assert (m.proxy.arch, m.proxy.pretrained) == PROXYCLIP["proxy"][0]
    assert (m.proxy.beta, m.proxy.gamma, m.proxy.pad_to) == (1.2, 3.0, 56)
    assert (m.clip.name, m.clip.pretrained) == PROXYCLIP["weights"][0]
    assert (m.maskclip.temperature, m.maskclip.synonyms, m.clip.pos_resize, m.clip.input) == (40.0, "max", "dino",
                                                                                              "floor")
    assert (m.post.pamr_steps, m.post.prob_thd, m.post.area_thd, m.bg_refine, m.dinoiser) == (0, 0.0, 0.0, False, False)
    with open(os.path.join(ROOT, "configs", "model", "proxyclip.yaml")) as f:
        node = {k: v for k, v in yaml.safe_load(f).items() if k not in ("defaults", "name")}
    assert node == METHODS["proxyclip"]
    from clip_dinoiser.models.build import model_config

    assert model_config({"name": "proxyclip", "text_cache": None}) == parse(
        ModelConfig, {**METHODS["proxyclip"], "name": "proxyclip", "text_cache": None}, "model")


def test_protocol_proxyclip_composes_its_test_settings():
    s = composed("proxyclip")
    assert s.protocol == "proxyclip" and s.slide.scores == "logits" and s.model.clip.input == "floor"
    scales = PROXYCLIP["scale"][0]
    for bench in _OURS:
        slide = s.slide.for_benchmark(bench)
        assert tuple(slide.scale) == scales.get(bench, scales["other"]) and slide.mode == "slide"
        crop, stride = PROXYCLIP["slide.cityscapes" if bench == "cityscapes" else "slide"][0]
        assert (tuple(slide.crop), tuple(slide.stride)) == (crop, stride)
    from clip_dinoiser.models.maskclip import Decoding
    from clip_dinoiser.protocols import get_protocol

    decoding = Decoding.from_config(s.model)
    for bench in _OURS:
        d = decoding.for_benchmark(bench)
        assert (d.temperature, d.prob_thd, d.area_thd) == (40.0, PROXYCLIP["prob_thd.bench"][0].get(bench, 0.0), 0.0)
    assert (s.data.vocabulary_set or get_protocol("proxyclip").vocabulary_set) == "proxyclip"
    from clip_dinoiser.models.backbone import PEERS_MEAN, PEERS_STD

    mean, std = PROXYCLIP["mean_std"][0]
    assert PEERS_MEAN == tuple(v / 255 for v in mean) and PEERS_STD == tuple(v / 255 for v in std)
    m = composed("proxyclip", "clip_dinoiser").model  # ProxyCLIP under ours keeps its method
    assert (m.name, m.proxy.beta, m.clip.input) == ("proxyclip", 1.2, "floor")


def test_proxyclip_vocabulary_is_its_class_lists():
    from clip_dinoiser.models.text import read_vocabulary_file

    # VOC's class 0: 26 scene names; COCO-Object's: 17 (PC configs/cls_voc21.txt, cls_coco_object.txt)
    for bench, (classes, names) in {"voc": (21, 46), "voc20": (20, 20), "coco_object": (81, 97),
                                    "context": (60, 60), "ade20k": (150, 150)}.items():
        vocab = read_vocabulary_file(BENCHMARKS[bench].vocabulary_in("proxyclip"))
        assert (len(vocab), sum(len(v) for v in vocab)) == (classes, names)
    coco = read_vocabulary_file(BENCHMARKS["coco_object"].vocabulary_in("proxyclip"))
    assert coco[0][-3:] == ("floor", "hill", "rail") and coco[1] == ("person",)
    assert not [p for p in PUBLISHED if p.model == "proxyclip"]  # none checked from a source
