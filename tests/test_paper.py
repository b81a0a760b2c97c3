"""The paper, written down once: every constant of the method with its source, checked against
what the tools build from their own hydra configs.

Nothing here reads a configuration value or calls a module to find out what to expect: the
expected values are literals, each cited. ``REF`` is the authors' implementation,
github.com/wysoczanska/clip_dinoiser (commit a954aae); ``FOUND`` is github.com/valeoai/FOUND;
``PAPER`` is Wysoczanska et al., "CLIP-DINOiser: Teaching CLIP a few DINO tricks for
open-vocabulary semantic segmentation", ECCV 2024 (arXiv 2312.12359).

What is compared is what a tool builds: ``configs/{eval,demo,app,train}.yaml`` composed with
hydra's compose API after ``register_configs()`` (as ``tools/*.py`` do before ``hydra.main``),
then ``build_model(cfg.model)`` with only the CLIP weights replaced by the tiny test model, the
benchmark table through ``selected_benchmarks`` / ``build_dataset`` / ``Evaluator.setting``, and
the training task through ``build_distiller`` (tiny teachers). Any change to a constant, to a
benchmark entry or to its vocabulary fails here.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from types import MappingProxyType

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from clip_dinoiser.config import (
    AppConfig,
    DemoConfig,
    EvalConfig,
    ModelConfig,
    TrainConfig,
    TrainEvalConfig,
    TrainSettings,
    parse,
    register_configs,
)
from clip_dinoiser.data.benchmarks import BENCHMARKS, PAPER_ORDER, build_dataset, eval_pipeline, selected_benchmarks
from clip_dinoiser.models import build_model
from clip_dinoiser.models.maskclip import Decoding, refines_background
from clip_dinoiser.models.pooling import guided_pooling

from .conftest import write_heads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")

# ------------------------------------------------------------------------------------------ the table
# name -> (value, source). The tests below compare each with what the tools build.
PAPER = MappingProxyType({
    # the frozen CLIP
    "clip.name": ("ViT-B-16", "REF configs/maskclip.yaml model.clip_model; PAPER Sec. 4 (ViT-B/16)"),
    "clip.pretrained": ("laion2b_s34b_b88k", "REF configs/maskclip.yaml decode_head.pretrained (OpenCLIP LAION-2B)"),
    "clip.width": (768, "REF models/clip_dinoiser/clip_dinoiser.py CLIP_DINOiser: in_size = 768 (ViT-B/16 width)"),
    "clip.out_dim": (512, "REF configs/maskclip.yaml decode_head.text_channels: 512"),
    "clip.patch": (16, "REF configs/maskclip.yaml backbone.patch_size: 16"),
    "clip.blocks": (12, "ViT-B/16: 12 residual blocks"),
    # CLIP-DINOiser
    "feats_idx": (-3, "REF configs/clip_dinoiser.yaml model.feats_idx; clip_dinoiser.py resblocks[feats_idx].ln_2"),
    "gamma": (0.2, "REF configs/clip_dinoiser.yaml model.gamma; PAPER Sec. 3 (correlation threshold)"),
    "delta": (0.99, "REF configs/clip_dinoiser.yaml model.delta; PAPER Sec. 3 (background refinement)"),
    "temperature": (100.0, "REF models/maskclip/maskclip.py MaskClipHead.cls_seg: softmax(output * 100)"),
    "templates": (80, "REF models/maskclip/utils/prompt_templates.py (80 CLIP ImageNet templates), "
                      "configs/maskclip.yaml use_templates: True"),
    "template.first": ("a bad photo of a {}.", "REF models/maskclip/utils/prompt_templates.py, first"),
    "template.last": ("a tattoo of the {}.", "REF models/maskclip/utils/prompt_templates.py, last"),
    "proj_dim": (256, "REF configs/clip_dinoiser.yaml model.in_dim: 256 (obj_proj output channels)"),
    "kernel_size": (3, "REF clip_dinoiser.py CLIP_DINOiser(conv_kernel=3)"),
    "obj_proj.padding": (1, "REF clip_dinoiser.py obj_proj: padding=conv_kernel // 2"),
    "obj_proj.padding_mode": ("replicate", "REF clip_dinoiser.py obj_proj: padding_mode='replicate'"),
    "bkg_decoder.kernel": (1, "REF clip_dinoiser.py bkg_decoder = nn.Conv2d(in_size, 1, (1, 1))"),
    "ks_thresh": (0.0, "PAPER compares with MaskCLIP without key smoothing; REF configs/maskclip.yaml has none"),
    "pd_thresh": (0.0, "PAPER compares with MaskCLIP without prompt denoising; REF configs/maskclip.yaml has none"),
    # test-time geometry
    "slide.scale": ((2048, 448), "REF segmentation/configs/_base_/datasets/*.py test_pipeline img_scale"),
    "slide.crop": ((448, 448), "REF segmentation/configs/_base_/datasets/*.py test_cfg crop_size"),
    "slide.stride": ((224, 224), "REF segmentation/configs/_base_/datasets/*.py test_cfg stride"),
    # training
    "optimizer": ("AdamW", "REF train.py do_train: torch.optim.AdamW"),
    "adamw.betas": ((0.9, 0.999), "REF train.py: AdamW with torch's defaults"),
    "adamw.eps": (1e-8, "REF train.py: AdamW with torch's defaults"),
    "adamw.weight_decay": (0.01, "REF train.py: AdamW with torch's defaults"),
    "corr_lr": (5e-5, "REF configs/clip_dinoiser.yaml train.corr_lr (obj_proj's group)"),
    "found_lr": (1e-2, "REF configs/clip_dinoiser.yaml train.found_lr (bkg_decoder's group)"),
    "milestones": ([5000], "REF configs/clip_dinoiser.yaml train.milestones; scheduler.py MultiStepLR per iteration"),
    "step_lr_gamma": (0.1, "REF configs/clip_dinoiser.yaml train.step_lr_gamma"),
    "batch_size": (16, "REF configs/clip_dinoiser.yaml train.batch_size"),
    "im_size": (448, "REF configs/clip_dinoiser.yaml train.im_size; train.py Resize + RandomCrop(im_size)"),
    "ds_size": (1000, "REF configs/clip_dinoiser.yaml train.ds_size (ImageNet images sampled)"),
    "epochs": (100, "REF configs/clip_dinoiser.yaml train.epochs"),
    "seed": (0, "REF configs/clip_dinoiser.yaml seed (heads' initialisation, the image sample, the batches)"),
    "iterations": (6300, "REF train.py: 1000 images, batch 16 (63 batches, the last one of 8), 100 epochs"),
    "brightness": ((0.5, 1.5), "REF train.py T.ColorJitter(0.5): brightness factor uniform in [0.5, 1.5]"),
    "flip": (0.5, "REF train.py T.RandomHorizontalFlip(p=0.5)"),
    "dino": ("vit_base_patch16_224.dino", "REF clip_dinoiser.py get_vit_encoder('vit_base', 'dino', 16, 'v')"),
    "found": ("vit_small_patch8_224.dino", "FOUND model.py FoundModel(vit_arch='vit_small', vit_patch_size=8)"),
    "found.pad_to": (16, "REF clip_dinoiser.py get_found_preds: make_input_divisible with vit_patch_size=16"),
    "found.antialias": (False, "REF ran torchvision 0.13.1: tensor T.functional.resize without antialiasing"),
})


def paper(name: str):
    return PAPER[name][0]


# Per benchmark: (mmseg data root under data/, img_dir, ann_dir, split, classes, background class,
# bg refinement, reduce_zero_label, img suffix, label suffix, PAPER mIoU).
# Sources: REF segmentation/configs/_base_/datasets/<file>.py (roots, folders, split) and
# segmentation/datasets/*.py (suffixes, reduce_zero_label, CLASSES); REF train.py validate:
# apply_found only for "voc" and "coco_object"; mIoU: PAPER, main results table, CLIP-DINOiser row.
VOC, CONTEXT, COCO = "VOCdevkit/VOC2012", "VOCdevkit/VOC2010", "coco_stuff164k"
VOC_SPLIT, CONTEXT_SPLIT = "ImageSets/Segmentation/val.txt", "ImageSets/SegmentationContext/val.txt"
TABLE = MappingProxyType({
    "voc": (VOC, "JPEGImages", "SegmentationClass", VOC_SPLIT, 21, True, True, False, ".jpg", ".png", 62.1),
    "context": (CONTEXT, "JPEGImages", "SegmentationClassContext", CONTEXT_SPLIT, 60, True, False, False, ".jpg",
                ".png", 32.4),
    "coco_object": (COCO, "images/val2017", "annotations/val2017", None, 81, True, True, False, ".jpg",
                    "_instanceTrainIds.png", 34.8),
    "voc20": (VOC, "JPEGImages", "SegmentationClass", VOC_SPLIT, 20, False, False, True, ".jpg", ".png", 80.9),
    "context59": (CONTEXT, "JPEGImages", "SegmentationClassContext", CONTEXT_SPLIT, 59, False, False, True, ".jpg",
                  ".png", 35.9),
    "coco_stuff": (COCO, "images/val2017", "annotations/val2017", None, 171, False, False, False, ".jpg",
                   "_labelTrainIds.png", 24.6),
    "cityscapes": ("cityscapes", "leftImg8bit/val", "gtFine/val", None, 19, False, False, False, "_leftImg8bit.png",
                   "_gtFine_labelTrainIds.png", 31.7),
    "ade20k": ("ade/ADEChallengeData2016", "images/validation", "annotations/validation", None, 150, False, False,
               True, ".jpg", ".png", 20.0),
})

# mmseg dataset classes (REF segmentation/configs/_base_/datasets/*.py dataset_type; REF's
# PascalVOCDataset20 and COCOObjectDataset are ours in clip_dinoiser/data/datasets.py).
DATASET_CLASSES = MappingProxyType({
    "voc": "PascalVOCDataset", "context": "PascalContextDataset", "coco_object": "COCOObjectDataset",
    "voc20": "PascalVOC20Dataset", "context59": "PascalContextDataset59", "coco_stuff": "COCOStuffDataset",
    "cityscapes": "CityscapesDataset", "ade20k": "ADE20KDataset",
})

# The vocabularies: the class names of REF's dataset classes (segmentation/datasets/*.py CLASSES;
# mmseg's CityscapesDataset and ADE20KDataset), in label order: (count, first, some names by
# index, last, sha256 of the names joined by newlines). Checked name by name against REF when written.
VOCABULARIES = MappingProxyType({
    "voc": (21, "background", {1: "aeroplane", 11: "dining table", 16: "potted plant"}, "tvmonitor",
            "44d0af1b23d3200ae300e79c63a3766238c6e39f0ba670e738c0a6099605f38f"),
    "context": (60, "background", {1: "aeroplane", 7: "bird", 10: "bottle"}, "wood",
                "017946d1336e7f4aca15ecfb61e9dfde27f269a17048c1ff01d20e5ac8a018d9"),
    "coco_object": (81, "background", {1: "person", 7: "train", 10: "traffic light"}, "toothbrush",
                    "8261fd586c0e6ac81d02a4b958c24779e43fe4655e1542aac2c9eb5909560e80"),
    "voc20": (20, "aeroplane", {7: "cat", 10: "dining table", 15: "potted plant"}, "tvmonitor",
              "51783cbb05b116a5d3c6928647cfabc18c78233c0ca79b6056bda9c3e3b7572d"),
    "context59": (59, "aeroplane", {1: "bag", 7: "boat", 10: "building"}, "wood",
                  "9ea0b2deeb7b226c538cbc6294d4fa4aff17ca0b60e7647674931c8071046e0f"),
    "coco_stuff": (171, "person", {1: "bicycle", 7: "truck", 10: "fire hydrant"}, "wood",
                   "8ea44449837dceb30923012b201fe0152adc612160d0d040c9cfcd77e95f6801"),
    "cityscapes": (19, "road", {1: "sidewalk", 7: "traffic sign", 10: "sky"}, "bicycle",
                   "5995d02d6c574d515fa02371c8c2b5367f55cba8a732fed0567427c093f95adf"),
    "ade20k": (150, "wall", {1: "building", 7: "bed", 10: "cabinet"}, "flag",
               "f9dbd8a75a0722c971d8c82db76dc205e06cb422d98153f4e5bbf90408ef5438"),
})


# ------------------------------------------------------------------------------------------ helpers
def compose_tool(config: str, *overrides: str):
    """The config ``tools/<config>.py`` gets: ``register_configs()``, then ``configs/<config>.yaml``."""
    register_configs()
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name=config, overrides=list(overrides))


@pytest.fixture(scope="module")
def heads_256(tmp_path_factory) -> str:
    """Heads at the paper's proj_dim (256) for the tiny CLIP (width 64), in the released format."""
    return write_heads(tmp_path_factory.mktemp("heads256"), proj_dim=256, seed=11)


def tiny_overrides(tiny_clip_file, heads: str | None) -> list[str]:
    """Only the weights differ from the tool's config: the tiny CLIP, and heads for its width."""
    name, path = tiny_clip_file
    return [f"model.clip.name={name}", f"model.clip.pretrained={path}", f"model.checkpoint={heads or 'null'}"]


def slide_of(settings) -> tuple:
    s = settings.slide
    return tuple(s.scale), tuple(s.crop), tuple(s.stride)


PAPER_SLIDE = (paper("slide.scale"), paper("slide.crop"), paper("slide.stride"))


# ------------------------------------------------------------------------------------------ the model
def test_table_entries_cite_a_source():
    assert all(isinstance(src, str) and ("REF" in src or "PAPER" in src or "FOUND" in src or "ViT" in src)
               for _, src in PAPER.values())


@pytest.mark.parametrize("tool", ["eval", "demo", "app", "train"])
def test_every_tool_composes_the_papers_model_settings(tool):
    extra = {"demo": ["image=x.jpg"], "train": ["train.data=."]}.get(tool, [])
    cfg = parse(ModelConfig, compose_tool(tool, *extra).model, "model")
    assert (cfg.name, cfg.clip.name, cfg.clip.pretrained) == ("clip_dinoiser", paper("clip.name"),
                                                               paper("clip.pretrained"))
    assert (cfg.feats_idx, cfg.gamma, cfg.delta) == (paper("feats_idx"), paper("gamma"), paper("delta"))
    assert (cfg.proj_dim, cfg.kernel_size, cfg.pooling, cfg.bg_refine) == (paper("proj_dim"), paper("kernel_size"),
                                                                           "guided", None)
    m = cfg.maskclip
    assert (m.temperature, m.templates, m.ks_thresh, m.pd_thresh) == (paper("temperature"), "imagenet80",
                                                                      paper("ks_thresh"), paper("pd_thresh"))


def test_eval_tools_model_carries_the_paper_constants(tiny_clip_file, heads_256):
    """``build_model(cfg.model)`` of tools/eval.py, only CLIP's weights and the heads' file swapped."""
    cfg = compose_tool("eval", *tiny_overrides(tiny_clip_file, heads_256))
    model = build_model(cfg.model)
    assert model.decoding == Decoding(gamma=paper("gamma"), delta=paper("delta"), bg_refine=None,
                                      ks_thresh=paper("ks_thresh"), pd_thresh=paper("pd_thresh"),
                                      temperature=paper("temperature"))
    blocks = model.backbone.visual.transformer.resblocks
    assert model.backbone.feats_idx == len(blocks) + paper("feats_idx")  # the third-to-last block
    assert model.pooling is guided_pooling
    obj, bkg = model.heads.obj_proj, model.heads.bkg_decoder
    k, pad = paper("kernel_size"), paper("obj_proj.padding")
    assert (obj.in_channels, obj.out_channels, obj.kernel_size, obj.padding) == (64, paper("proj_dim"), (k, k),
                                                                                (pad, pad))
    assert (obj.padding_mode, obj.stride, obj.dilation, obj.groups, obj.bias is not None) == (
        paper("obj_proj.padding_mode"), (1, 1), (1, 1), 1, True)
    kb = paper("bkg_decoder.kernel")
    assert (bkg.in_channels, bkg.out_channels, bkg.kernel_size, bkg.padding, bkg.bias is not None) == (
        64, 1, (kb, kb), (0, 0), True)
    assert obj.in_channels == bkg.in_channels == model.backbone.width  # the heads read CLIP's width
    templates = model.text.templates
    assert len(templates) == paper("templates") == len(OPENAI_IMAGENET_TEMPLATES)
    assert templates == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]  # open_clip's own list, in order
    assert (templates[0], templates[-1]) == (paper("template.first"), paper("template.last"))


def test_vit_b16_heads_read_768_channels(monkeypatch):
    """The eval tool's model at ViT-B/16 size: open_clip builds the architecture the config names on
    the meta device (no weights, no download, so no weights file to find first); the heads are
    built by the real code at full size."""
    import open_clip

    from clip_dinoiser.models import build as build_module

    cfg = compose_tool("eval", "model.checkpoint=null", "model.text_cache=null")
    made = []

    def meta_clip(name, pretrained, key):
        made.append((name, pretrained))
        with torch.device("meta"):
            return open_clip.create_model(name, device="meta")

    monkeypatch.setattr(build_module, "load_open_clip", meta_clip)
    monkeypatch.setattr(build_module, "check_weights", lambda rows: None)
    model = build_model(cfg.model)
    assert made == [(paper("clip.name"), paper("clip.pretrained"))]
    b = model.backbone
    assert (b.width, b.out_dim, b.patch_size) == (paper("clip.width"), paper("clip.out_dim"), (16, 16))
    assert len(b.visual.transformer.resblocks) == paper("clip.blocks") and b.feats_idx == 12 + paper("feats_idx")
    obj, bkg = model.heads.obj_proj, model.heads.bkg_decoder
    assert tuple(obj.weight.shape) == (paper("proj_dim"), paper("clip.width"), 3, 3)
    assert obj.padding_mode == paper("obj_proj.padding_mode") and obj.padding == (1, 1)
    assert tuple(bkg.weight.shape) == (1, paper("clip.width"), 1, 1)


# ------------------------------------------------------------------------------------------ test-time geometry
def test_every_tool_slides_the_papers_windows():
    assert slide_of(parse(EvalConfig, compose_tool("eval"), "")) == PAPER_SLIDE
    assert slide_of(parse(DemoConfig, compose_tool("demo", "image=x.jpg"), "")) == PAPER_SLIDE
    assert slide_of(parse(AppConfig, compose_tool("app"), "")) == PAPER_SLIDE
    train = compose_tool("train", "train.data=.")
    assert slide_of(parse(TrainEvalConfig, train.eval, "eval")) == PAPER_SLIDE
    # the library's own defaults, for callers without a config
    from clip_dinoiser.engine.evaluation.evaluate import Evaluator
    from clip_dinoiser.engine.evaluation.inference import resize_keep_ratio, segment, slide_inference

    assert slide_of(Evaluator()) == PAPER_SLIDE
    for fn in (slide_inference, segment):
        assert slide_of(type("S", (), {"slide": inspect.signature(fn).parameters["cfg"].default})) == PAPER_SLIDE
    assert inspect.signature(resize_keep_ratio).parameters["scale"].default == paper("slide.scale")
    assert tuple(eval_pipeline(21)[1].scale) == paper("slide.scale")


# ------------------------------------------------------------------------------------------ benchmarks
def test_benchmark_names_and_data_all():
    assert set(PAPER_ORDER) == set(TABLE) and len(PAPER_ORDER) == 8
    every = selected_benchmarks(parse(EvalConfig, compose_tool("eval", "data=all"), "").data)
    assert [b.name for b, _ in every] == list(PAPER_ORDER)
    assert {b.name: root for b, root in every} == {n: os.path.join("data", TABLE[n][0]) for n in TABLE}


@pytest.mark.parametrize("name", list(TABLE))
def test_benchmark_entry_is_the_papers(name):
    root, img_dir, ann_dir, split, k, background, refine, _, _, _, miou = TABLE[name]
    ((bench, folder),) = selected_benchmarks(parse(EvalConfig, compose_tool("eval", f"data={name}"), "").data)
    assert (bench.name, folder) == (name, os.path.join("data", root))
    assert (bench.img_dir, bench.ann_dir, bench.split, bench.num_classes) == (img_dir, ann_dir, split, k)
    assert (bench.bg_refine, bench.paper_miou, bench.dataset) == (refine, miou, DATASET_CLASSES[name])
    from clip_dinoiser.vocabulary import read_vocabulary_file

    vocab = read_vocabulary_file(bench.vocabulary_file)
    names = [s[0] for s in vocab]
    count, first, some, last, digest = VOCABULARIES[name]
    assert all(len(s) == 1 for s in vocab)  # one name per class, no synonyms
    assert (len(names), names[0], names[-1]) == (count, first, last) and count == k
    assert {i: names[i] for i in some} == some
    assert hashlib.sha256("\n".join(names).encode()).hexdigest() == digest
    assert ("background" in names) == background


@pytest.fixture(scope="module")
def synthetic_benchmarks(tmp_path_factory) -> str:
    from .synthetic_data import make_benchmark

    data = str(tmp_path_factory.mktemp("paper_data"))
    for name in TABLE:
        make_benchmark(data, name, n=1)
    return data


@pytest.mark.parametrize("name", list(TABLE))
def test_benchmark_dataset_reads_labels_as_the_paper(name, synthetic_benchmarks):
    """What ``build_dataset`` makes of each entry (as tools/eval.py's ``checked_benchmarks``)."""
    *_, k, _, _, reduce_zero, img_suffix, seg_suffix, _ = TABLE[name]
    settings = parse(EvalConfig, compose_tool("eval", f"data={name}", f"data.root={synthetic_benchmarks}"), "")
    ((bench, _),) = selected_benchmarks(settings.data)
    dataset = build_dataset(bench, os.path.join(synthetic_benchmarks, bench.root), scale=settings.slide.scale)
    assert (dataset.reduce_zero_label, dataset.img_suffix, dataset.seg_map_suffix) == (reduce_zero, img_suffix,
                                                                                      seg_suffix)
    assert len(dataset.metainfo["classes"]) == k
    assert tuple(dataset.pipeline.transforms[1].scale) == paper("slide.scale")


def test_evaluator_refines_background_on_voc_and_coco_object_only(tiny_clip_file, heads_256):
    """``Evaluator.setting`` as tools/eval.py calls it (data.bg_refine null: the paper's choice)."""
    from clip_dinoiser.engine.evaluation.evaluate import Evaluator
    from clip_dinoiser.models.text import Classes

    cfg = compose_tool("eval", *tiny_overrides(tiny_clip_file, heads_256))
    model = build_model(cfg.model)
    # the class names as the setting reads them; their text embeddings do not matter here (and 581
    # names x 80 templates would take seconds)
    model.text.classes = lambda vocab: Classes(vocab, torch.zeros(len(vocab), model.text.dim))
    evaluator = Evaluator(num_workers=0, progress=False)
    refined = set()
    for name, entry in TABLE.items():
        setting = evaluator.setting(model, BENCHMARKS[name], cfg.data.vocabulary, cfg.data.bg_refine)
        assert setting.decoding.bg_refine is entry[6]
        assert setting.classes.names[0] == VOCABULARIES[name][1] and len(setting.classes.names) == entry[4]
        assert (setting.decoding.gamma, setting.decoding.delta) == (paper("gamma"), paper("delta"))
        if refines_background(setting.decoding.bg_refine, setting.classes):
            refined.add(name)
    assert refined == {"voc", "coco_object"}


# ------------------------------------------------------------------------------------------ training
def train_overrides(tiny_clip_file, tiny_teachers, data: str) -> list[str]:
    """Only the weights differ from tools/train.py's config: tiny CLIP and tiny teachers."""
    name, path = tiny_clip_file
    out = [f"model.clip.name={name}", f"model.clip.pretrained={path}", f"train.data={data}"]
    for key in ("dino", "found"):
        t = tiny_teachers[key]
        kwargs = ",".join(f"{k}:{v}" for k, v in t["kwargs"].items())
        out += [f"teachers.{key}.pretrained={t['pretrained']}", f"++teachers.{key}.kwargs={{{kwargs}}}"]
    return out + [f"teachers.found.decoder={tiny_teachers['found']['decoder']}"]


def test_train_tool_composes_the_papers_schedule_and_teachers():
    cfg = compose_tool("train", "train.data=.")
    t = parse(TrainSettings, cfg.train, "train")
    assert (t.corr_lr, t.found_lr, t.milestones, t.step_lr_gamma) == (paper("corr_lr"), paper("found_lr"),
                                                                      paper("milestones"), paper("step_lr_gamma"))
    assert (t.batch_size, t.im_size, t.ds_size, t.epochs, t.antialias, t.seed) == (
        paper("batch_size"), paper("im_size"), paper("ds_size"), paper("epochs"), False, paper("seed"))
    teachers = OmegaConf.to_container(cfg.teachers)
    assert (teachers["dino"]["type"], teachers["dino"]["pretrained"]) == ("dino", paper("dino"))
    assert (teachers["found"]["type"], teachers["found"]["pretrained"]) == ("found", paper("found"))
    assert (teachers["dino"]["arch"], teachers["found"]["arch"]) == tuple(paper(k).split(".")[0] for k in ("dino",
                                                                                                         "found"))
    assert teachers["found"]["antialias"] is paper("found.antialias")
    from clip_dinoiser.data.train_images import ResumableBatchSampler

    assert ResumableBatchSampler(t.ds_size, t.batch_size, t.epochs, t.seed).total == paper("iterations")
    assert parse(TrainConfig, cfg, "").model.gamma == paper("gamma")  # the target threshold


def test_train_tools_task_builds_the_papers_optimizer_images_and_teachers(tmp_path, tiny_clip_file, tiny_teachers):
    """``build_distiller`` on tools/train.py's config (tiny weights): what the run trains with."""
    from PIL import Image

    from clip_dinoiser.engine.training.train import build_distiller
    from clip_dinoiser.teachers import DINOTeacher, FOUNDTeacher

    from .conftest import random_image

    image = str(tmp_path / "a.png")
    Image.fromarray(random_image(300, 500, seed=1)).save(image)
    cfg = compose_tool("train", *train_overrides(tiny_clip_file, tiny_teachers, str(tmp_path)))
    task = build_distiller(OmegaConf.to_container(cfg, resolve=True), torch.device("cpu"), [image])
    assert task.gamma == paper("gamma")
    dataset = task.dataset()
    assert dataset.size == paper("im_size") and dataset.antialias is False
    assert tuple(dataset[(0, 3)].shape) == (3, paper("im_size"), paper("im_size"))
    dino, found = task.teachers["dino"], task.teachers["found"]
    assert isinstance(dino, DINOTeacher) and isinstance(found, FOUNDTeacher)
    assert (found.pad_to, found.antialias) == (paper("found.pad_to"), paper("found.antialias"))
    optimizer, scheduler = task.make_optimizer()
    assert type(optimizer).__name__ == paper("optimizer")
    heads = task.student.heads
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert len(groups) == 4 and len(optimizer.param_groups) == 2
    for part, lr in ((heads.obj_proj, paper("corr_lr")), (heads.bkg_decoder, paper("found_lr"))):
        for p in part.parameters():
            g = groups[id(p)]
            assert (g["lr"], g["betas"], g["eps"], g["weight_decay"], g["amsgrad"]) == (
                lr, paper("adamw.betas"), paper("adamw.eps"), paper("adamw.weight_decay"), False)
    assert dict(scheduler.milestones) == {m: 1 for m in paper("milestones")} and scheduler.gamma == paper(
        "step_lr_gamma")


def test_training_brightness_and_flip_are_the_papers(tmp_path, monkeypatch):
    """ColorJitter(0.5): factors uniform in [0.5, 1.5]; RandomHorizontalFlip(0.5)."""
    from PIL import Image

    from clip_dinoiser.data import train_images
    from clip_dinoiser.data.train_images import TrainImages

    path = str(tmp_path / "square.png")
    pixels = torch.arange(16 * 16 * 3, dtype=torch.uint8).reshape(16, 16, 3)
    Image.fromarray(pixels.numpy()).save(path)
    plain = pixels.permute(2, 0, 1).float() / 255
    factors = []
    monkeypatch.setattr(train_images.TF, "adjust_brightness", lambda x, f: factors.append(f) or x)
    items = [TrainImages([path], 16)[(0, seed)] for seed in range(400)]
    flipped = [bool(torch.equal(x, plain.flip(-1))) for x in items]
    assert all(torch.equal(x, plain) or f for x, f in zip(items, flipped))
    low, high = paper("brightness")
    assert low <= min(factors) < low + 0.02 and high - 0.02 < max(factors) <= high
    assert abs(sum(factors) / len(factors) - (low + high) / 2) < 0.04
    assert abs(sum(flipped) / len(flipped) - paper("flip")) < 0.08
