"""MaskCLIP+ target network (models/target.py) and its training data (data/seg_train.py):
tiny timm backbones, synthetic benchmark folders in mmseg's layouts with unreadable labels."""

from __future__ import annotations

import builtins
import logging
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clip_dinoiser.data.seg_train import (
    SegAugment,
    TargetTrainImages,
    augment_for,
    get_train_split,
    training_split,
)
from clip_dinoiser.errors import ConfigError, UserError
from clip_dinoiser.models.target import (
    ASPPv2,
    TargetConfig,
    TargetModel,
    TargetSegmenter,
    build_target,
    convert_sync_batchnorm,
)

# resnet101c (mmseg's ResNetV1c) shrunk: two blocks in the dilated stages show the contracted dilation
TINY = {"layers": (1, 1, 2, 2), "channels": (8, 16, 32, 64), "stem_width": 8}
WIDTH = 16


def tiny_cfg(**changes) -> TargetConfig:
    return TargetConfig(**{"pretrained": None, "kwargs": dict(TINY), **changes})


def tiny_target(seed: int = 0, **changes) -> TargetSegmenter:
    torch.manual_seed(seed)
    return build_target(tiny_cfg(**changes), WIDTH)


def perturb_norms(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so eval-mode checks are not degenerate."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


# ----------------------------------------------------------------------------- the network


def test_deeplabv2_resnet_v1c_d8_output_stride_and_shapes():
    model = tiny_target()
    model.set_classes(torch.randn(5, WIDTH))
    images = torch.rand(2, 3, 64, 48)
    assert model(images).shape == (2, 5, 8, 6)
    assert model.logits_at_input(images).shape == (2, 5, 64, 48)
    bb = model.backbone  # deep stem 3x3 32-32-64 (here 8-8-16), strides 1,2,1,1, dilations 1,1,2,4 contracted
    assert [bb.conv1[i].kernel_size for i in (0, 3, 6)] == [(3, 3)] * 3
    assert bb.layer2[0].conv2.stride == (2, 2) and bb.layer3[0].conv2.stride == bb.layer4[0].conv2.stride == (1, 1)
    dilations = [bb.layer3[0].conv2.dilation, bb.layer3[1].conv2.dilation, bb.layer4[0].conv2.dilation,
                 bb.layer4[1].conv2.dilation]
    assert [d[0] for d in dilations] == [1, 2, 2, 4]


def test_classifier_is_the_normalised_text_embeddings_without_temperature():
    model = tiny_target().eval()
    perturb_norms(model)
    emb = torch.randn(4, WIDTH) * 3
    model.set_classes(emb)
    images = torch.rand(2, 3, 32, 32)
    feats = model.embed(images)
    expected = torch.einsum("bdhw,kd->bkhw", feats, emb / emb.norm(dim=1, keepdim=True))
    torch.testing.assert_close(model(images), expected)
    assert "class_embeddings" in dict(model.named_buffers())
    assert "class_embeddings" not in model.state_dict()
    assert not any(p is model.class_embeddings for p in model.parameters())


def test_learned_background_embedding_classifies_the_background_row_as_maskclip_pluses_cls_bg():
    """MaskCLIP+'s ``cls_seg`` with ``cls_bg``: the background's scores are the features against the
    normalised learned ``bg_embeddings`` (``bg_embeddings / bg_embeddings.norm(dim=-1)``), every
    other class's against its normalised text embedding; here in the row of the class named
    background (MaskCLIP+ prepends it: its vocabularies have no background name)."""
    model = tiny_target(cls_bg=True).eval()
    perturb_norms(model)
    emb = torch.randn(4, WIDTH)
    model.set_classes(emb, bg_index=2)
    images = torch.rand(2, 3, 32, 32)
    feats = model.embed(images)
    weights = emb / emb.norm(dim=1, keepdim=True)
    bg = model.bg_embedding.detach()
    weights[2] = (bg / bg.norm(dim=-1, keepdim=True))[0]
    torch.testing.assert_close(model(images), torch.einsum("bdhw,kd->bkhw", feats, weights))
    with pytest.raises(ConfigError, match="background"):
        model.set_classes(emb)


def test_dropout_before_the_classifier_is_mmsegs_dropout2d():
    """``target.dropout`` p: mmseg's ``BaseDecodeHead`` ``nn.Dropout2d(dropout_ratio)`` on the features
    before ``cls_seg`` (MaskCLIP+: 0, none); in eval mode the identity."""
    model = tiny_target(dropout=0.5)
    emb = torch.randn(3, WIDTH)
    model.set_classes(emb)
    feats = torch.randn(2, WIDTH, 4, 4)
    torch.manual_seed(7)
    out = model.classify(feats)
    torch.manual_seed(7)
    dropped = F.dropout2d(feats, 0.5, training=True)
    torch.testing.assert_close(out, torch.einsum("bdhw,kd->bkhw", dropped, F.normalize(emb, dim=1)))
    assert (dropped == 0).all(dim=(2, 3)).any()  # whole channels dropped
    model.eval()
    torch.testing.assert_close(model.classify(feats), torch.einsum("bdhw,kd->bkhw", feats, F.normalize(emb, dim=1)))


def test_one_class_vocabulary_is_a_classifier_and_no_class_is_refused():
    model = tiny_target().eval()
    model.set_classes(torch.randn(1, WIDTH))
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1, 4, 4)
    assert model.classify(torch.randn(1, WIDTH, 2, 2), torch.randn(1, WIDTH)).shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="K x D"):
        model.set_classes(torch.randn(0, WIDTH))
    with pytest.raises(RuntimeError, match="no classes"):
        model.classify(torch.randn(1, WIDTH, 2, 2), torch.randn(0, WIDTH))


def test_new_vocabulary_changes_classes_not_trained_parameters():
    model = tiny_target().eval()
    model.set_classes(torch.randn(3, WIDTH))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(1, 3, 32, 32)
    assert model(images).shape[1] == 3
    model.set_classes(torch.randn(7, WIDTH))
    assert model(images).shape[1] == 7
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="K x D"):
        model.set_classes(torch.randn(WIDTH))


def test_aspp_v2_is_the_sum_of_dilated_conv_bn_relu_branches():
    model = tiny_target().eval()
    perturb_norms(model)
    head = model.head
    assert isinstance(head, ASPPv2) and head.dilations == (6, 12, 18, 24)
    x = torch.randn(2, 256, 9, 7)
    expected = 0
    for d, branch in zip((6, 12, 18, 24), head.branches):
        conv, bn = branch.conv, branch.bn
        assert conv.bias is None and conv.kernel_size == (3, 3)
        y = F.conv2d(x, conv.weight, padding=d, dilation=d)
        y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        expected = expected + F.relu(y)
    torch.testing.assert_close(head([x]), expected)


def test_backbone_weights_from_a_local_file_round_trip(tmp_path):
    import timm

    model = tiny_target(seed=0).eval()
    full = timm.create_model("resnet101c", **TINY)  # a timm checkpoint holds the classifier too
    full.load_state_dict(model.backbone.state_dict(), strict=False)
    path = str(tmp_path / "resnet.pth")
    torch.save(full.state_dict(), path)
    loaded = build_target(tiny_cfg(pretrained=path), WIDTH).eval()
    loaded.head.load_state_dict(model.head.state_dict())
    emb = torch.randn(3, WIDTH)
    model.set_classes(emb)
    loaded.set_classes(emb)
    images = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)

    # mmseg's ResNetV1c names (open-mmlab://resnet101_v1c): deep stem as stem.{0,1,3,4,6,7}, wrapped
    stem = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4", "conv1.6": "stem.6",
            "bn1": "stem.7"}
    mm = {}
    for k, v in full.state_dict().items():
        head, rest = (k.rsplit(".", 1) if k.startswith("conv1.") else k.split(".", 1))
        mm[f"{stem.get(head, head)}.{rest}"] = v
    assert any(k.startswith("stem.7.") for k in mm)
    torch.save({"meta": {}, "state_dict": mm}, tmp_path / "mmseg.pth")
    from_mmseg = build_target(tiny_cfg(pretrained=str(tmp_path / "mmseg.pth")), WIDTH)
    bb = from_mmseg.backbone.state_dict()
    assert all(torch.equal(bb[k], v) for k, v in model.backbone.state_dict().items())


def test_random_init_without_weights_and_one_line_errors_for_bad_files(tmp_path):
    a, b = tiny_target(seed=0), tiny_target(seed=1)
    assert not torch.equal(a.backbone.conv1[0].weight, b.backbone.conv1[0].weight)
    with pytest.raises(FileNotFoundError, match="target.pretrained"):
        build_target(tiny_cfg(pretrained=str(tmp_path / "nope.pth")), WIDTH)
    torch.save({"conv1.0.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="do not fit") as e:
        build_target(tiny_cfg(pretrained=str(tmp_path / "other.pth")), WIDTH)
    assert "\n" not in str(e.value)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth"):
        build_target(tiny_cfg(pretrained=str(tmp_path / "junk.pth")), WIDTH)
    with pytest.raises(ConfigError, match="not of target.backbone"):
        build_target(tiny_cfg(pretrained="resnet50.a1_in1k"), WIDTH)
    with pytest.raises(ConfigError, match="target.arch"):
        build_target(tiny_cfg(arch="segformer"), WIDTH)
    with pytest.raises(ConfigError, match="unknown timm model"):
        build_target(tiny_cfg(backbone="no_such_net", kwargs={}), WIDTH)


def test_deeplabv3plus_and_another_timm_backbone_build_and_run():
    v3 = tiny_target(arch="deeplabv3plus").eval()
    assert v3.head.dilations == (1, 12, 24, 36) and v3.levels == (1, 4)  # layer1 (stride 4) skip, layer4
    v3.set_classes(torch.randn(6, WIDTH))
    assert v3(torch.rand(2, 3, 64, 64)).shape == (2, 6, 16, 16)  # the stride-4 skip's grid
    torch.manual_seed(0)
    for arch, stride in (("deeplabv2", 8), ("deeplabv3plus", 4)):
        other = build_target(TargetConfig(arch=arch, backbone="mobilenetv3_small_050", pretrained=None), WIDTH)
        other.set_classes(torch.randn(2, WIDTH))
        assert other(torch.rand(2, 3, 64, 64)).shape == (2, 2, 64 // stride, 64 // stride)
    synced = convert_sync_batchnorm(tiny_target())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())


def test_target_model_serves_the_evaluator_interface(tiny_clip_file):
    from clip_dinoiser.engine.evaluation.evaluate import Decoded, Setting
    from clip_dinoiser.models.build import build_clip, model_config

    name, path = tiny_clip_file
    _, text = build_clip(model_config({"name": "maskclip", "clip": {"name": name, "pretrained": path},
                                       "text_cache": None, "maskclip": {"templates": "none"}}))
    width = text.classes(["cat"]).embeddings.shape[1]
    torch.manual_seed(0)
    model = TargetModel(build_target(tiny_cfg(), width), text).eval()
    classes = model.text.classes(["cat", "dog", "sky"])
    images = torch.rand(2, 3, 32, 32)
    probs = Decoded(model, [Setting(model.decoding, classes)])(images)
    logits = torch.einsum("bdhw,kd->bkhw", model.target.embed(images), classes.embeddings)
    torch.testing.assert_close(probs, logits.softmax(dim=1))
    model.set_vocabulary(["cat", "dog"])
    assert model(images).shape == (2, 2, 4, 4) and model.class_names == ["cat", "dog"]
    from dataclasses import replace

    for refinement in ({"ks_thresh": 0.5}, {"pd_thresh": 0.5}):  # MaskCLIP's refinements act on CLIP's features
        with pytest.raises(ConfigError, match="not to a target network"):
            model.decode(model.features(images), replace(model.decoding, **refinement))


# ----------------------------------------------------------------------------- training splits

LABEL_MARKERS = ("SegmentationClass", "annotations", "gtFine")  # every label folder of the five layouts


def is_label(path) -> bool:
    return any(m in os.fspath(path) for m in LABEL_MARKERS) if isinstance(path, str | os.PathLike) else False


@pytest.fixture()
def labels_forbidden(monkeypatch):
    """Any open, listing or image read of a label path fails the test."""
    def guard(fn):
        def wrapped(path=".", *args, **kwargs):
            assert not is_label(path), f"label path touched: {path}"
            return fn(path, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(Image, "open", guard(Image.open))
    monkeypatch.setattr(cv2, "imread", guard(cv2.imread))
    monkeypatch.setattr(os, "scandir", guard(os.scandir))
    monkeypatch.setattr(os, "listdir", guard(os.listdir))


def jpeg(path, size=(12, 9), seed=0) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def label_trap(path) -> None:
    """A label where mmseg expects one: a folder, so opening it would fail (root ignores chmod)."""
    os.makedirs(path, exist_ok=True)


def write_split(path, names) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(f"{n}\n" for n in names))


def make_layouts(data):
    """The five training layouts (mmseg's), label files as traps; returns split name -> (root, expected files)."""
    out = {}
    voc = data / "VOCdevkit/VOC2012"
    imgs = [jpeg(voc / f"JPEGImages/2007_00000{i}.jpg", seed=i) for i in range(4)]
    write_split(voc / "ImageSets/Segmentation/train.txt", ["2007_000002", "2007_000000"])
    write_split(voc / "ImageSets/Segmentation/aug.txt", ["2007_000001"])
    write_split(voc / "ImageSets/Segmentation/val.txt", ["2007_000003"])
    for i in range(4):
        label_trap(voc / f"SegmentationClass/2007_00000{i}.png")
        label_trap(voc / f"SegmentationClassAug/2007_00000{i}.png")
    out["voc20"] = (voc, imgs[:3])
    ctx = data / "VOCdevkit/VOC2010"
    imgs = [jpeg(ctx / f"JPEGImages/2008_00000{i}.jpg", seed=i) for i in range(3)]
    write_split(ctx / "ImageSets/SegmentationContext/train.txt", ["2008_000001", "2008_000000"])
    (ctx / "SegmentationClassContext").mkdir()
    (ctx / "SegmentationClassContext/2008_000000.png").write_bytes(b"garbage")
    out["context59"] = (ctx, imgs[:2])
    coco = data / "coco_stuff164k"
    imgs = [jpeg(coco / f"images/train2017/00000000000{i}.jpg", seed=i) for i in range(2)]
    jpeg(coco / "images/val2017/000000000009.jpg")
    label_trap(coco / "annotations/train2017/000000000000_labelTrainIds.png")
    out["coco_stuff"] = (coco, imgs)
    city = data / "cityscapes"
    imgs = [jpeg(city / f"leftImg8bit/train/{c}/{c}_000000_000019_leftImg8bit.png", seed=i)
            for i, c in enumerate(["aachen", "bochum"])]
    (city / "leftImg8bit/train/aachen/notes.json").write_text("{}")
    label_trap(city / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png")
    out["cityscapes"] = (city, imgs)
    ade = data / "ade/ADEChallengeData2016"
    imgs = [jpeg(ade / f"images/training/ADE_train_0000000{i}.jpg", seed=i) for i in range(1, 3)]
    (ade / "annotations/training").mkdir(parents=True)
    (ade / "annotations/training/ADE_train_00000001.png").write_bytes(b"\x89PNG garbage")
    out["ade20k"] = (ade, imgs)
    return out


def test_training_splits_read_mmseg_layouts_without_touching_labels(tmp_path, labels_forbidden):
    layouts = make_layouts(tmp_path)
    for name, (root, expected) in layouts.items():
        files = training_split(name, str(root))
        assert files == sorted(expected), name
        split = get_train_split(name)
        image, valid = TargetTrainImages(files, augment_for(split))[(0, 7)]
        assert image.shape == (3, *split.crop) and valid.shape == split.crop
    assert training_split("folder", str(tmp_path / "coco_stuff164k/images")) == sorted(
        layouts["coco_stuff"][1] + [str(tmp_path / "coco_stuff164k/images/val2017/000000000009.jpg")])


def test_voc_prefers_trainaug_then_train_plus_aug_then_train(tmp_path, caplog):
    voc = tmp_path / "VOCdevkit/VOC2012"
    imgs = [jpeg(voc / f"JPEGImages/a{i}.jpg") for i in range(3)]
    sets = voc / "ImageSets/Segmentation"
    write_split(sets / "train.txt", ["a0"])
    with caplog.at_level(logging.WARNING):
        assert training_split("voc", str(voc)) == imgs[:1]
    assert "trainaug.txt not found" in caplog.text
    write_split(sets / "aug.txt", ["a2"])
    assert training_split("voc", str(voc)) == [imgs[0], imgs[2]]
    write_split(sets / "trainaug.txt", ["a1", "a2", "a0"])
    assert training_split("voc", str(voc)) == imgs


def test_missing_or_empty_splits_are_one_line_errors_naming_the_path(tmp_path):
    root = tmp_path / "VOCdevkit/VOC2010"
    with pytest.raises(FileNotFoundError, match=str(root)):
        training_split("context", str(root))
    (root / "JPEGImages").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="SegmentationContext/train.txt"):
        training_split("context", str(root))
    write_split(root / "ImageSets/SegmentationContext/train.txt", [])
    with pytest.raises(FileNotFoundError, match="is empty"):
        training_split("context", str(root))
    write_split(root / "ImageSets/SegmentationContext/train.txt", ["x1"])
    with pytest.raises(FileNotFoundError, match="x1.jpg"):
        training_split("context", str(root))
    ade = tmp_path / "ade/ADEChallengeData2016"
    (ade / "images/training").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="images/training") as e:
        training_split("ade20k", str(ade))
    with pytest.raises(ConfigError, match="unknown"):
        training_split("imagenet", str(tmp_path))
    assert "\n" not in str(e.value)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="bad.jpg"):
        TargetTrainImages([str(bad)])[(0, 0)]


# ----------------------------------------------------------------------------- augmentation


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_augmentation_is_a_function_of_the_seed_only():
    image = rgb(40, 60)
    a, b = TargetTrainImages([]), TargetTrainImages([])
    state = np.random.get_state()[1].copy()
    first = [a.augment(image, s) for s in (3, 10**12, 3)]
    second = [b.augment(image, s) for s in (10**12, 3)]  # another process, another order
    assert np.array_equal(np.random.get_state()[1], state)  # numpy's global state is left as it was
    assert torch.equal(first[0][0], first[2][0]) and torch.equal(first[0][0], second[1][0])
    assert torch.equal(first[1][0], second[0][0])
    assert not torch.equal(first[0][0], first[1][0])


def test_small_image_is_resized_within_ratio_padded_and_masked():
    image = rgb(20, 30)
    for pad, value in (("mean", (0.485, 0.456, 0.406)), ("zero", (0.0, 0.0, 0.0))):
        ds = TargetTrainImages([], SegAugment(scale=(64, 64), crop=(256, 256), photometric=False, pad=pad))
        sizes = set()
        for seed in range(12):
            out, valid = ds.augment(image, seed)
            assert out.shape == (3, 256, 256) and valid.dtype == torch.bool
            h, w = int(valid.any(1).sum()), int(valid.any(0).sum())
            assert valid.sum() == h * w and valid[:h, :w].all()
            assert 32 - 1 <= w <= 128 + 1 and abs(h / w - 20 / 30) < 0.05  # long side 64 x [0.5, 2], ratio kept
            assert torch.equal(out[:, ~valid], torch.tensor(value).view(3, 1).expand(3, int((~valid).sum())))
            sizes.add((h, w))
        assert len(sizes) > 6


def test_crop_and_flip():
    image = rgb(40, 60)
    ref = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    same = TargetTrainImages([], SegAugment(scale=(60, 40), ratio_range=(1.0, 1.0), crop=(40, 60), photometric=False))
    kinds = set()
    for seed in range(10):
        out, valid = same.augment(image, seed)
        assert valid.all()
        kinds.add("id" if torch.equal(out, ref) else "flip" if torch.equal(out, ref.flip(-1)) else "other")
    assert kinds == {"id", "flip"}
    crop = TargetTrainImages([], SegAugment(scale=(60, 40), ratio_range=(1.0, 1.0), crop=(16, 24), flip_prob=0.0,
                                            photometric=False))
    out, valid = crop.augment(image, 1)
    assert out.shape == (3, 16, 24) and valid.all()
    windows = ref.unfold(1, 16, 1).unfold(2, 24, 1)  # 3 x 25 x 37 x 16 x 24: every crop position
    assert (windows == out[:, None, None]).flatten(3).all(-1).all(0).any()


def test_photometric_distortion_stays_within_mmseg_bounds():
    gray = np.full((24, 24, 3), 128, np.uint8)  # saturation and hue leave gray unchanged
    ds = TargetTrainImages([], SegAugment(scale=(24, 24), ratio_range=(1.0, 1.0), crop=(24, 24)))
    values = set()
    for seed in range(20):
        out, _ = ds.augment(gray, seed)
        assert (out == out[0, 0, 0]).all()
        v = round(float(out[0, 0, 0]) * 255)
        assert (128 - 32) // 2 <= v <= (128 + 32) * 3 // 2  # brightness +-32 then contrast x[0.5, 1.5]
        values.add(v)
    assert len(values) > 5 and 128 in values
