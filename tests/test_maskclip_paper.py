"""MaskCLIP and MaskCLIP+ (Zhou et al., ECCV 2022), written down once: every constant of their test
protocol, annotation-free and zero-shot training with its source, checked against what the tools
build; the schedule and the loss against mmengine's and mmseg's own.

Nothing here reads a configuration value to find out what to expect: the expected values are
literals. ``MC`` is github.com/chongzhou96/MaskCLIP (commit 245d31f); ``MC-PAPER`` is the paper
(arXiv 2112.01071).
"""

from __future__ import annotations

from types import MappingProxyType

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from clip_dinoiser.config import EvalConfig, TargetConfig, TargetTrainSettings, parse
from clip_dinoiser.data.seg_train import TRAIN_SPLITS, SegAugment, mmseg_pipeline
from clip_dinoiser.engine.training.target_train import poly_schedule, segmentation_loss
from clip_dinoiser.protocols import MASKCLIP_UNSEEN, PUBLISHED

from .test_paper import compose_tool

_DS = "MC configs/_base_/datasets/"
_ZS = "MC configs/maskclip_plus/zero_shot/"
MASKCLIP = MappingProxyType({
    # the test protocol (configs/maskclip/*.py, the datasets' test_pipeline)
    "test.mode": ("whole", "MC configs/_base_/models/maskclip_{r50,vit16}.py test_cfg=dict(mode='whole')"),
    "test.scale": ((2048, 512), _DS + "pascal_voc12_aug_20.py, coco-stuff164k.py, ade20k.py img_scale"),
    "test.scale.context": ((520, 520), _DS + "pascal_context_59.py img_scale = (520, 520)"),
    "test.scale.cityscapes": ((1024, 512), "MC configs/maskclip/maskclip_vit16_1024x512_cityscapes.py img_scale"),
    "test.norm": ("mmseg", _DS + "*.py img_norm_cfg mean=[123.675, 116.28, 103.53] std=[58.395, 57.12, 57.375]"),
    "templates": (85, "MC tools/maskclip_utils/prompt_engineering.py prompt_templates: 80 ImageNet + 5 scene"),
    "vit.ln_eps": (1e-6, "MC configs/_base_/models/maskclip_vit16.py norm_cfg=dict(type='LN', eps=1e-6)"),
    "vit.act": ("GELU", "MC configs/_base_/models/maskclip_vit16.py act_cfg=dict(type='GELU') (exact)"),
    "temperature": (100.0, "MC mmseg/models/decode_heads/maskclip_head.py refine_output: softmax(output*100)"),
    # annotation-free MaskCLIP+ (configs/maskclip_plus/anno_free/*, schedules)
    "lr": (0.01, "MC configs/_base_/schedules/schedule_*.py optimizer SGD lr=0.01"),
    "momentum": (0.9, "MC configs/_base_/schedules/schedule_*.py momentum=0.9"),
    "weight_decay": (5.0e-4, "MC configs/_base_/schedules/schedule_*.py weight_decay=0.0005"),
    "poly.power": (0.9, "MC configs/_base_/schedules/schedule_*.py lr_config policy='poly' power=0.9"),
    "poly.min_lr": (1.0e-4, "MC configs/_base_/schedules/schedule_*.py min_lr=1e-4"),
    "batch": (16, "MC README: 4 GPUs x samples_per_gpu=4"),
    "ratio_range": ((0.5, 2.0), _DS + "*.py train_pipeline Resize ratio_range=(0.5, 2.0)"),
    "cat_max_ratio": (0.75, _DS + "*.py train_pipeline RandomCrop cat_max_ratio=0.75"),
    "flip": (0.5, _DS + "*.py train_pipeline RandomFlip prob=0.5"),
    "photometric": ({"brightness_delta": 32, "contrast_range": (0.5, 1.5), "saturation_range": (0.5, 1.5),
                     "hue_delta": 18}, _DS + "*.py train_pipeline dict(type='PhotoMetricDistortion'): mmseg 0.20's "
                                          "defaults (mmseg/datasets/pipelines/transforms.py)"),
    "img_norm": (((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
                 _DS + "*.py img_norm_cfg mean, std on 0..255 RGB (to_rgb=True), for the target's input too"),
    "target": ({"output_stride": 8, "dropout": 0.0, "norm_eval": False, "dilations": (6, 12, 18, 24)},
               "MC configs/_base_/models/maskclip_plus_r50.py: ResNetV1c strides (1, 2, 1, 1) dilations (1, 1, 2, 4) "
               "(d8), norm_eval=False, dropout_ratio=0, ASPPHeadV2 dilations=(6, 12, 18, 24)"),
    "splits": ({"voc": ((2048, 512), (512, 512), 2000), "context": ((520, 520), (480, 480), 4000),
                "coco_stuff": ((2048, 512), (512, 512), 8000), "cityscapes": ((2048, 1024), (512, 1024), 4000),
                "ade20k": ((2048, 512), (512, 512), 8000)},
               "MC configs/maskclip_plus/anno_free/*_{2k,4k,8k}_*.py: (img_scale, crop_size, iterations)"),
    # zero-shot MaskCLIP+ (configs/maskclip_plus/zero_shot/*.py)
    "zs.voc20": ({"unseen": (15, 16, 17, 18, 19), "iterations": 20000, "self_train_from": 2000, "lr": 0.01,
                  "weight_decay": 5.0e-4, "arch": "deeplabv2", "cls_bg": False},
                 _ZS + "maskclip_plus_r50_deeplabv2_r101-d8_512x512_20k_voc12aug_20.py: suppress_labels=range(15, 20), "
                       "start_clip_guided=(1, 1999), start_self_train=(2000, -1), schedule_20k"),
    "zs.voc": ({"unseen": (16, 17, 18, 19, 20), "iterations": 20000, "self_train_from": 2000, "lr": 0.01,
                "weight_decay": 5.0e-4, "arch": "deeplabv2", "cls_bg": True},
               _ZS + "maskclip_plus_r50_deeplabv2_r101-d8_512x512_20k_voc12aug.py: suppress_labels=range(16, 21), "
                     "cls_bg=True"),
    "zs.context": ({"unseen": (20, 34, 49, 15, 8, 25, 7, 55, 32, 1), "iterations": 40000, "self_train_from": 4000,
                    "lr": 0.004, "weight_decay": 1.0e-4, "arch": "deeplabv3plus", "cls_bg": True},
                   _ZS + "maskclip_plus_r50_deeplabv3plus_r101-d8_480x480_40k_pascal_context.py: suppress_labels, "
                         "SGD lr=0.004 weight_decay=0.0001, DepthwiseSeparableASPPHead dilations (1, 12, 24, 36)"),
    "zs.coco_stuff": ({"unseen": (19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160),
                       "iterations": 80000, "self_train_from": 8000, "lr": 0.01, "weight_decay": 5.0e-4,
                       "arch": "deeplabv2", "cls_bg": False},
                      _ZS + "maskclip_plus_r50_deeplabv2_r101-d8_512x512_80k_coco-stuff164k.py"),
    "zs.annotator": (("maskclip", "RN50", "openai"), _ZS + "*.py: clip_cfg ResNetClip depth 50, RN50 text embeddings"),
    # published numbers
    "maskclip.miou": ({("RN50", "voc20"): 41.5, ("RN50", "context59"): 18.5, ("RN50", "coco_stuff"): 10.2,
                       ("RN50x16", "voc20"): 50.9, ("RN50x16", "context59"): 20.3, ("RN50x16", "coco_stuff"): 13.6,
                       ("ViT-B-16", "voc20"): 49.5, ("ViT-B-16", "context59"): 21.7, ("ViT-B-16", "coco_stuff"): 12.5},
                      "MC configs/maskclip/README.md, annotation-free tables"),
    "maskclip_plus.miou": ({("RN50", "voc20"): 58.0, ("RN50", "context59"): 23.9, ("RN50", "coco_stuff"): 13.8,
                            ("RN50x16", "voc20"): 67.5, ("RN50x16", "context59"): 25.2,
                            ("RN50x16", "coco_stuff"): 17.3, ("ViT-B-16", "context59"): 31.1,
                            ("ViT-B-16", "coco_stuff"): 18.0},
                           "MC configs/maskclip_plus/README.md, annotation-free tables"),
    "zero_shot.miou": ({"voc20": 87.8, "context": 48.4, "coco_stuff": 39.7},
                       "MC configs/maskclip_plus/README.md, zero-shot tables (R-50)"),
    "zero_shot.unseen": ({"voc20": 86.1, "context": 66.7, "coco_stuff": 54.7},
                         "MC-PAPER abstract: unseen-class mIoU on VOC / Context / COCO-Stuff"),
})


def mc(key):
    return MASKCLIP[key][0]


def test_table_entries_cite_a_source():
    assert all(src.startswith("MC") for _, src in MASKCLIP.values())


def test_protocol_maskclip_composes_maskclips_test_settings():
    settings = parse(EvalConfig, compose_tool("eval", "protocol=maskclip", "model=maskclip"), "")
    s = settings.slide
    assert (s.mode, tuple(s.scale), s.scores) == (mc("test.mode"), mc("test.scale"), "logits")
    for bench in ("context", "context59"):
        assert tuple(s.for_benchmark(bench).scale) == mc("test.scale.context")
    assert tuple(s.for_benchmark("cityscapes").scale) == mc("test.scale.cityscapes")
    assert tuple(s.for_benchmark("voc20").scale) == mc("test.scale")
    assert settings.model.clip.input == mc("test.norm") and settings.model.clip.mmseg_vit is True
    from clip_dinoiser.models.backbone import MMSEG_LN_EPS

    assert MMSEG_LN_EPS == mc("vit.ln_eps") and mc("vit.act") == "GELU"
    m = settings.model.maskclip
    assert m.templates == "maskclip85" and m.temperature == mc("temperature")
    assert settings.protocol == "maskclip"
    from clip_dinoiser.models.text import TEMPLATE_SETS

    assert len(TEMPLATE_SETS["maskclip85"]()) == mc("templates")
    ours = parse(EvalConfig, compose_tool("eval"), "")  # our protocol is untouched
    assert (ours.slide.mode, tuple(ours.slide.scale), ours.slide.scores, ours.model.clip.input) == (
        "slide", (2048, 448), "probs", "clip")
    assert ours.model.clip.mmseg_vit is False


def test_annotation_free_settings_are_maskclip_pluses():
    t = parse(TargetTrainSettings, compose_tool("train_target").train, "train")
    assert (t.lr, t.momentum, t.weight_decay, t.poly_power, t.min_lr, t.batch_size) == (
        mc("lr"), mc("momentum"), mc("weight_decay"), mc("poly.power"), mc("poly.min_lr"), mc("batch"))
    assert tuple(t.ratio_range) == mc("ratio_range") and t.unseen is None and t.self_train_from is None
    for name, (scale, crop, iters) in mc("splits").items():
        split = TRAIN_SPLITS[name]
        assert (split.scale, split.crop, split.iters) == (scale, crop, iters), name


def test_the_pipeline_resizes_within_maskclips_ratio_and_crops_with_its_category_ratio():
    """What the loader runs: mmcv's RandomResize with the ratio range, mmseg's RandomCrop with
    MaskCLIP+'s cat_max_ratio where labels are loaded (zero-shot), none where they are not."""
    from clip_dinoiser.config import plain
    from clip_dinoiser.engine.training.target_train import TargetTraining

    settings = plain(parse(TargetTrainSettings, {"benchmark": "voc20", "output": "o"}, "train"))
    task = TargetTraining(torch.nn.Conv2d(3, 3, 1), torch.nn.Identity(), settings, [], ["a"])
    for labels, ratio in ((False, 1.0), (True, mc("cat_max_ratio"))):
        steps = mmseg_pipeline(task.augment, labels=labels).transforms
        resize = next(s for s in steps if type(s).__name__ == "RandomResize")
        crop = next(s for s in steps if type(s).__name__ == "RandomCrop")
        assert tuple(resize.ratio_range) == mc("ratio_range") and resize.resize.keep_ratio
        assert tuple(resize.scale) == mc("splits")["voc"][0] and tuple(crop.crop_size) == mc("splits")["voc"][1]
        assert crop.cat_max_ratio == ratio
        flip = next(s for s in steps if type(s).__name__ == "RandomFlip")
        assert flip.prob == mc("flip") and flip.direction == "horizontal"
        pmd = next(s for s in steps if type(s).__name__ == "PhotoMetricDistortion")
        assert {"brightness_delta": pmd.brightness_delta, "contrast_range": (pmd.contrast_lower, pmd.contrast_upper),
                "saturation_range": (pmd.saturation_lower, pmd.saturation_upper),
                "hue_delta": pmd.hue_delta} == mc("photometric")
    assert SegAugment().ratio_range == mc("ratio_range")


def test_the_target_is_maskclip_pluses_network_on_its_normalised_input():
    """The default target (MaskCLIP+'s ``maskclip_plus_r50.py``): d8, no dropout, BatchNorm trained,
    ASPPHeadV2's dilations; its input normalised with MaskCLIP+'s img_norm_cfg: the head's input
    equals the backbone run on (255 x image - mean) / std with those literals."""
    from clip_dinoiser.models.target import build_target

    from .test_target import TINY, perturb_norms

    cfg = parse(TargetConfig, compose_tool("train_target").target, "target")
    expected = mc("target")
    assert (cfg.output_stride, cfg.dropout, cfg.norm_eval, cfg.dilations) == (
        expected["output_stride"], expected["dropout"], expected["norm_eval"], None)
    torch.manual_seed(0)
    model = build_target(TargetConfig(**{**cfg.__dict__, "pretrained": None, "kwargs": dict(TINY)}), 16).eval()
    perturb_norms(model)
    assert model.backbone.feature_info.reduction()[-1] == expected["output_stride"]
    assert model.head.dilations == expected["dilations"] and isinstance(model.dropout, torch.nn.Identity)
    images = torch.rand(2, 3, 40, 56)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in mc("img_norm"))
    with torch.no_grad():
        feats = model.backbone((images * 255 - mean) / std)
        torch.testing.assert_close(model.embed(images), model.head([feats[i] for i in model.levels]),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["voc20", "voc", "context", "coco_stuff"])
def test_zero_shot_presets_are_maskclip_pluses_configs(name):
    cfg = compose_tool("train_target", f"zero_shot={name}")
    t = parse(TargetTrainSettings, cfg.train, "train")
    target = parse(TargetConfig, cfg.target, "target")
    expected = mc(f"zs.{name}")
    assert t.benchmark == name and t.unseen == "maskclip" and MASKCLIP_UNSEEN[name] == expected["unseen"]
    assert (t.iterations, t.self_train_from, t.lr, t.weight_decay) == (
        expected["iterations"], expected["self_train_from"], expected["lr"], expected["weight_decay"])
    assert (target.arch, target.cls_bg) == (expected["arch"], expected["cls_bg"])
    if target.arch == "deeplabv3plus":
        assert (target.dilations, target.c1_channels) == ([1, 12, 24, 36], 48)
    annotator = OmegaConf.to_container(cfg.annotator)
    assert (annotator["name"], annotator["clip"]["name"], annotator["clip"]["pretrained"]) == mc("zs.annotator")
    assert (annotator["clip"]["input"], annotator["maskclip"]["templates"], t.vocabulary_set) == (
        "mmseg", "maskclip85", "maskclip")
    assert annotator["maskclip"]["ks_thresh"] == annotator["maskclip"]["pd_thresh"] == 0.0
    assert annotator["bg_refine"] is False  # MaskCLIP has no background refinement (CLIP-DINOiser's)


def test_context59s_unseen_classes_are_contexts_without_the_background():
    """MaskCLIP's zero-shot Context split is given on the 60 classes (background at 0); on context59
    (no background) the same classes are one index lower, and the class-name files agree."""
    from clip_dinoiser.data.benchmarks import BENCHMARKS
    from clip_dinoiser.vocabulary import read_vocabulary_file

    context = mc("zs.context")["unseen"]
    assert MASKCLIP_UNSEEN["context59"] == tuple(i - 1 for i in context)
    names = {name: read_vocabulary_file(BENCHMARKS[name].vocabulary_in("maskclip"))
             for name in ("context", "context59")}
    assert names["context"][0][0] == "background" and names["context"][1:] == names["context59"]
    assert [names["context"][i][0] for i in context] == [names["context59"][i][0] for i in MASKCLIP_UNSEEN["context59"]]
    assert [names["context"][i][0] for i in context][:4] == ["cow", "motorbike", "sofa", "cat"]  # the configs' comment


def test_published_numbers_are_maskclips():
    by = {(p.model, p.tower, p.benchmark, p.zero_shot, p.metric): p.miou for p in PUBLISHED if p.corruption is None}
    for (tower, bench), miou in mc("maskclip.miou").items():
        assert by.pop(("maskclip", tower, bench, False, "mIoU")) == miou
    for (tower, bench), miou in mc("maskclip_plus.miou").items():
        assert by.pop(("target", tower, bench, False, "mIoU")) == miou
    for bench, miou in mc("zero_shot.miou").items():
        assert by.pop(("target", "RN50", bench, True, "mIoU")) == miou
    for bench, miou in mc("zero_shot.unseen").items():
        assert by.pop(("target", "RN50", bench, True, "mIoU(unseen)")) == miou
    assert not by  # nothing else is claimed
    assert all(p.pretrained == "openai" and p.protocol == "maskclip" for p in PUBLISHED)


def test_poly_schedule_is_mmengines_poly_lr():
    """Every iteration's learning rate equals mmengine's own ``PolyLR`` with MaskCLIP+'s power and
    floor, over the whole run. MaskCLIP+ ran mmcv 1.x's ``poly`` policy, ``(base - min) * (1 -
    iter / max_iters) ** power + min``, which reaches ``min_lr`` only after the last iteration;
    mmengine's ``PolyLR`` divides by ``end - begin - 1``, so ``end = total + 1`` is mmcv 1.x's."""
    from mmengine.optim.scheduler import PolyLR

    total = 50
    params = [torch.nn.Parameter(torch.zeros(1))]
    ours = torch.optim.SGD(params, lr=mc("lr"))
    schedule = poly_schedule(ours, total, mc("poly.power"), mc("poly.min_lr"))
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=mc("lr"))
    reference = PolyLR(theirs, eta_min=mc("poly.min_lr"), power=mc("poly.power"), begin=0, end=total + 1,
                       by_epoch=False)
    for _ in range(total):
        assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        ours.step()
        theirs.step()
        schedule.step()
        reference.step()
    assert ours.param_groups[0]["lr"] == pytest.approx(mc("poly.min_lr"), rel=1e-9)


def test_the_tasks_optimizer_is_sgd_with_maskclip_pluses_settings():
    from clip_dinoiser.config import plain
    from clip_dinoiser.engine.training.target_train import TargetTraining

    settings = plain(parse(TargetTrainSettings, {"benchmark": "context59", "output": "o"}, "train"))
    task = TargetTraining(torch.nn.Conv2d(3, 3, 1), torch.nn.Identity(), settings, [], ["a"])
    optimizer, scheduler = task.make_optimizer()
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (mc("lr"), mc("momentum"), mc("weight_decay"))
    for _ in range(2000):  # context59: 4000 iterations; half-way
        optimizer.step()
        scheduler.step()
    expected = (mc("lr") - mc("poly.min_lr")) * (1 - 2000 / 4000) ** mc("poly.power") + mc("poly.min_lr")
    assert group["lr"] == pytest.approx(expected, rel=1e-9)


def test_the_loss_is_mmsegs_cross_entropy_averaged_over_every_pixel():
    """MaskCLIP+ (mmseg 0.20) averages the cross-entropy over ALL pixels, the ignored ones counting
    0: mmseg's own ``CrossEntropyLoss`` with ``avg_non_ignore=False`` and ignore index 255."""
    from mmseg.models.losses import CrossEntropyLoss

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7)
    labels = torch.randint(0, 5, (2, 6, 7))
    labels[0, :3] = 255
    theirs = CrossEntropyLoss(avg_non_ignore=False)(logits, labels, ignore_index=255)
    torch.testing.assert_close(segmentation_loss(logits, labels), theirs)
    labelled_mean = F.cross_entropy(logits, labels, ignore_index=255)  # torch's default: over the labelled ones
    assert not torch.allclose(segmentation_loss(logits, labels), labelled_mean)
