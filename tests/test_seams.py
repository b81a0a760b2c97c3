"""The four extension seams, each extended from inside this file (nothing in the package edited)
and run through the public entry points: ``build_model``, evaluation, a training step, the CLI.

* backbone: a tiny timm ViT as the image tower (``model.clip.backbone``);
* teacher: a tiny timm ViT with register tokens as the correlation teacher (``teachers.<n>.type``),
  its tokens checked against timm's own ``forward_features``;
* pooling: a hard-threshold mean pooling (``model.pooling``);
* benchmark: a benchmark with its own class list in the mmseg layout (``data.benchmark``, from a
  user's own config folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from clip_dinoiser.config import SlideConfig, TeacherConfig
from clip_dinoiser.data.benchmarks import Benchmark
from clip_dinoiser.engine.evaluation.evaluate import evaluate_benchmark
from clip_dinoiser.engine.evaluation.inference import slide_inference, to_tensor
from clip_dinoiser.engine.training.train import train
from clip_dinoiser.errors import ConfigError
from clip_dinoiser.models import BackboneOutput, build_model, load_heads_state, model_config
from clip_dinoiser.teachers import FrozenViT, Teacher, build_teachers, load_timm_vit

from .conftest import TINY_CLIP_CFG, random_image, write_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLIDE = SlideConfig(scale=(256, 64), crop=(64, 64), stride=(32, 32), window_batch=8)
HERE = "tests.test_seams"


# ---------------------------------------------------------------- a backbone of our own


class TimmBackbone(nn.Module):
    """A timm ViT as the image tower: ``inter`` = tokens after block ``feats_idx``, ``dense`` =
    the last tokens through a fixed projection into CLIP's joint space (``out_dim``)."""

    def __init__(self, vit: nn.Module, out_dim: int, feats_idx: int) -> None:
        super().__init__()
        self.vit = vit.eval().requires_grad_(False)
        self.patch_size = (vit.patch_embed.patch_size[0], vit.patch_embed.patch_size[1])
        self.width, self.out_dim = vit.embed_dim, out_dim
        self.feats_idx = feats_idx % len(vit.blocks)
        torch.manual_seed(5)
        self.proj = nn.Linear(vit.embed_dim, out_dim).requires_grad_(False)

    def forward(self, images: Tensor, *, with_inter: bool = True, with_keys: bool = False,
                with_dense: bool = True) -> BackboneOutput:
        grid = (images.shape[-2] // self.patch_size[0], images.shape[-1] // self.patch_size[1])
        x = self.vit.patch_drop(self.vit._pos_embed(self.vit.patch_embed(images)))
        inter = None
        for i, block in enumerate(self.vit.blocks):
            x = block(x)
            if i == self.feats_idx:
                inter = x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)
        dense = self.proj(self.vit.norm(x)[:, 1:]).transpose(1, 2).reshape(x.shape[0], -1, *grid)
        return BackboneOutput(dense=dense if with_dense else None, inter=inter if with_inter else None)


def timm_backbone(clip_model: nn.Module, cfg) -> TimmBackbone:
    """The factory named by ``model.clip.backbone``: (open_clip model, ModelConfig) -> backbone."""
    import timm

    torch.manual_seed(4)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=64, depth=3,
                            embed_dim=64, num_heads=2, dynamic_img_size=True)
    return TimmBackbone(vit, clip_model.text_projection.shape[1], cfg.feats_idx)


def test_backbone_seam_timm_vit_through_build_model_evaluation_and_training(tmp_path, tiny_clip_file,
                                                                          tiny_heads_file, tiny_teachers):
    name, path = tiny_clip_file
    cfg = {"clip": {"name": name, "pretrained": path, "backbone": f"{HERE}.timm_backbone"},
           "checkpoint": tiny_heads_file, "proj_dim": 16, "feats_idx": -2}
    model = build_model(cfg)
    assert isinstance(model.backbone, TimmBackbone) and model.backbone.feats_idx == 1
    model.set_vocabulary(["cat", "background"])
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        out = model.backbone(images)
        corrs, objectness = model.heads(out.inter)
        expected = model.decode(type(model.features(images))(out.dense, None, corrs, objectness))
        torch.testing.assert_close(model(images), expected)
    assert model(images).shape == (2, 2, 4, 6)

    root = _custom_benchmark(tmp_path / "bench")
    bench = _bench(root)
    result = evaluate_benchmark(model, bench, root, slide=SLIDE, num_workers=0, progress=False)
    assert result.num_images == 3 and result.miou == pytest.approx(_independent_miou(model, root, bench), abs=1e-9)

    write_images(str(tmp_path / "imgs"), 4)
    run = _train_cfg(tmp_path, cfg, tiny_teachers)
    last = train(run, torch.device("cpu"))
    trained = load_heads_state(last)
    assert not torch.equal(trained["obj_proj.weight"], model.heads.obj_proj.weight)  # the heads learnt


# ---------------------------------------------------------------- a teacher of our own


REG_VIT = {"arch": "vit_small_patch16_224",
           "kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 64, "reg_tokens": 4,
                      "no_embed_class": True}}


class RegisterTeacher(Teacher):
    """Correlations of a ViT with register tokens (DINOv2-reg style), for the correlation head;
    the target keeps correlations above ``gamma``, the loss is the default BCE."""

    head = "correlation"

    def __init__(self, vit: FrozenViT) -> None:
        super().__init__()
        self.vit = vit

    @torch.no_grad()
    def target(self, images: Tensor, grid: tuple[int, int], gamma: float) -> Tensor:
        _, k, _ = self.vit.last_qkv(images)
        k = F.normalize(k.float(), dim=-1)
        return (k @ k.transpose(1, 2) >= gamma).float()


def register_teacher(cfg: TeacherConfig) -> RegisterTeacher:
    """The factory named by ``teachers.<name>.type``."""
    return RegisterTeacher(FrozenViT(load_timm_vit(cfg.arch, cfg.pretrained, **dict(cfg.kwargs))))


def _timm_qkv(vit: nn.Module, images: Tensor) -> Tensor:
    """The last block's qkv output inside timm's own ``forward_features`` (all tokens)."""
    stash = {}
    hook = vit.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: stash.__setitem__("qkv", o))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    try:
        vit.forward_features((images - mean) / std)
    finally:
        hook.remove()
    return stash["qkv"]


def test_teacher_seam_register_tokens_match_timm_and_train(tmp_path, tiny_clip_file, tiny_teachers):
    import timm

    torch.manual_seed(6)
    vit = timm.create_model(REG_VIT["arch"], pretrained=False, num_classes=0, **REG_VIT["kwargs"]).eval()
    weights = str(tmp_path / "reg.pth")
    torch.save(vit.state_dict(), weights)
    teachers = {"reg": {"type": f"{HERE}.register_teacher", "arch": REG_VIT["arch"], "pretrained": weights,
                        "kwargs": REG_VIT["kwargs"]}, "found": tiny_teachers["found"]}
    built = build_teachers(teachers)
    reg = built["reg"]
    assert isinstance(reg, RegisterTeacher) and reg.vit.num_prefix == 5  # class token + 4 registers
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        q, k, v = reg.vit.last_qkv(images)
        ours = torch.cat([q, k, v], dim=-1)
        timm_tokens = _timm_qkv(vit, images)
    assert ours.shape == (2, 16, 96) and timm_tokens.shape == (2, 21, 96)
    torch.testing.assert_close(ours, timm_tokens[:, 5:], rtol=1e-5, atol=1e-5)  # the 16 patches, none of the prefix

    write_images(str(tmp_path / "imgs"), 4)
    name, path = tiny_clip_file
    run = _train_cfg(tmp_path, {"clip": {"name": name, "pretrained": path}, "proj_dim": 16}, teachers)
    last = train(run, torch.device("cpu"))
    assert set(load_heads_state(last)) == {"obj_proj.weight", "obj_proj.bias", "bkg_decoder.weight",
                                           "bkg_decoder.bias"}
    two = {**teachers, "dino": tiny_teachers["dino"]}  # two teachers for the correlation head
    with pytest.raises(ConfigError, match="all train the correlation head"):
        train(_train_cfg(tmp_path, run["model"], two, output="two"), torch.device("cpu"))


# ---------------------------------------------------------------- a pooling of our own


def threshold_mean_pooling(feats: Tensor, corrs: Tensor, gamma: float) -> Tensor:
    """Each patch: the plain mean of the patches it correlates with at ``gamma`` or more (itself included)."""
    b, d, h, w = feats.shape
    weights = (corrs >= gamma).float() + torch.eye(h * w)
    pooled = feats.flatten(2) @ weights.transpose(1, 2) / weights.sum(-1).unsqueeze(1)
    return pooled.view(b, d, h, w)


def test_pooling_seam_is_used_by_the_model(model_cfg):
    guided = build_model(model_cfg)
    ours = build_model({**model_cfg, "pooling": f"{HERE}.threshold_mean_pooling", "gamma": 0.3})
    assert ours.pooling is threshold_mean_pooling
    for m in (guided, ours):
        m.set_vocabulary(["cat", "dog"])  # no background: no refinement, the classifier alone follows the pooling
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = ours.backbone(images)
        corrs, _ = ours.heads(out.inter)
        pooled = threshold_mean_pooling(out.dense, corrs, 0.3)
        logits = 100.0 * torch.einsum("bdhw,kd->bkhw", F.normalize(pooled, dim=1), ours.text.embeddings)
        torch.testing.assert_close(ours(images), logits.softmax(1), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(ours(images), guided(images))
    with pytest.raises(ConfigError, match="model.pooling=tests.test_seams.nothing: .* has no 'nothing'"):
        model_config({**model_cfg, "pooling": f"{HERE}.nothing"})


# ---------------------------------------------------------------- a benchmark of our own

CLASSES = ["road", "tree", "sky"]


def _custom_benchmark(root) -> str:
    """3 images and labels in the mmseg layout (images/*.jpg, annotations/*.png), 3 classes + 255."""
    rng = np.random.default_rng(0)
    for sub in ("images", "annotations"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i, (h, w) in enumerate([(60, 80), (90, 70), (64, 64)]):
        Image.fromarray(random_image(h, w, seed=i)).save(os.path.join(root, "images", f"s{i}.jpg"), quality=95)
        label = rng.integers(0, 3, (h, w)).astype(np.uint8)
        label[:4] = 255
        Image.fromarray(label).save(os.path.join(root, "annotations", f"s{i}.png"))
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    return str(root)


def _bench(root: str) -> Benchmark:
    from clip_dinoiser.config import BenchmarkConfig
    from clip_dinoiser.data.benchmarks import custom_benchmark

    return custom_benchmark("streets", BenchmarkConfig(classes=os.path.join(root, "classes.txt")))


def _independent_miou(model, root: str, bench: Benchmark) -> float:
    """cv2 reading and resizing, slide inference, a numpy confusion matrix."""
    from clip_dinoiser.models import read_vocabulary_file

    model.set_vocabulary(read_vocabulary_file(bench.vocabulary_file))
    k = bench.num_classes
    conf = np.zeros((k, k), np.int64)
    for name in sorted(os.listdir(os.path.join(root, "images"))):
        bgr = cv2.imread(os.path.join(root, "images", name), cv2.IMREAD_COLOR)
        h, w = bgr.shape[:2]
        s = min(SLIDE.scale[0] / max(h, w), SLIDE.scale[1] / min(h, w))
        rgb = cv2.resize(bgr, (int(w * s + 0.5), int(h * s + 0.5)), interpolation=cv2.INTER_LINEAR)[..., ::-1]
        (probs,) = slide_inference(model, [to_tensor(rgb)], cfg=SLIDE, out_sizes=[(h, w)])
        pred = probs.argmax(0).numpy()
        gt = np.asarray(Image.open(os.path.join(root, "annotations", name.replace(".jpg", ".png")))).astype(int)
        valid = gt != 255
        np.add.at(conf, (gt[valid], pred[valid]), 1)
    inter = np.diag(conf).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmean(inter / (conf.sum(0) + conf.sum(1) - inter)) * 100)


def test_benchmark_seam_from_a_users_own_config_folder(tmp_path, model_cfg, tiny_clip_file, tiny_heads_file):
    root = _custom_benchmark(tmp_path / "streets")
    user = tmp_path / "my_configs" / "data"
    user.mkdir(parents=True)
    (user / "streets.yaml").write_text(
        "defaults:\n  - schema\n  - _self_\n\nname: streets\n"
        f"root: {root}\nbenchmark:\n  classes: {root}/classes.txt\n  paper_miou: 12.5\n  title: Streets\n")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CLIP_CFG))
    tiny = [f"model.clip.name={tmp_path / 'tiny.json'}", f"model.clip.pretrained={tiny_clip_file[1]}",
            f"model.checkpoint={tiny_heads_file}", "model.proj_dim=16", "device=cpu", "num_workers=0",
            "slide.scale=[256,64]", "slide.crop=[64,64]", "slide.stride=[32,32]", "slide.window_batch=8"]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval.py"), "--config-dir",
                        str(tmp_path / "my_configs"), "data=streets", "output=out", *tiny],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["streets"]["class_IoU"]) == set(CLASSES) and results["streets"]["paper_mIoU"] == 12.5
    assert "Streets" in r.stdout and "12.5" in r.stdout  # the summary table takes the new benchmark
    model = build_model(model_cfg)
    assert results["streets"]["mIoU"] == pytest.approx(_independent_miou(model, root, _bench(root)), abs=1e-9)


def _train_cfg(tmp_path, model: dict, teachers: dict, output: str = "run") -> dict:
    train_cfg = {"data": str(tmp_path / "imgs"), "output": str(tmp_path / output), "ds_size": 4, "batch_size": 2,
                 "epochs": 1, "corr_lr": 1e-2, "im_size": 64, "num_workers": 0, "save_every": 100}
    return {"model": model, "teachers": teachers, "train": train_cfg, "precision": "fp32"}
