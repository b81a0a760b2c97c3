"""Teachers, distillation losses, resumable training and the train CLI on tiny random models."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_dinoiser.data.train_images import ResumableBatchSampler, TrainImages, list_images, sample_subset
from clip_dinoiser.engine.training.train import Distiller, train
from clip_dinoiser.models import build_model, load_heads_state
from clip_dinoiser.teachers import DINOTeacher, build_teachers, dino_pos_embed

from .conftest import write_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hooked_qkv(vit, images):
    """The reference's way: a forward hook on the last block's qkv of the intact timm model."""
    stash = {}
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = vit.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: stash.__setitem__("qkv", o))
    try:
        vit((images - mean) / std)
    finally:
        h.remove()
    c = stash["qkv"].shape[-1] // 3
    b, n = stash["qkv"].shape[:2]
    qkv = stash["qkv"].reshape(b, n, 3, vit.blocks[-1].attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    return [t.transpose(1, 2).reshape(b, n, c)[:, 1:] for t in qkv]


@torch.no_grad()
def test_teachers_match_hooked_timm_features(tiny_teachers):
    teachers = build_teachers(tiny_teachers)
    dino, found = teachers["dino"], teachers["found"]
    assert (dino.head, found.head) == ("correlation", "objectness")
    images = torch.rand(2, 3, 64, 64)
    _, _, v = hooked_qkv(dino.vit.vit, images)
    v = v / v.norm(dim=-1, keepdim=True)
    corrs = v @ v.transpose(1, 2)
    torch.testing.assert_close(dino.correlations(images), corrs, rtol=1e-5, atol=1e-5)
    target = dino.target(images, (4, 4), 0.2)
    assert torch.equal(target, (corrs >= 0.2).float())
    _, k, _ = hooked_qkv(found.vit.vit, images)
    feats = k.transpose(1, 2).reshape(2, -1, 8, 8)
    w, b = found.decoder.weight, found.decoder.bias
    probs = torch.sigmoid(torch.einsum("bchw,oc->bohw", feats, w[:, :, 0, 0]) + b.view(1, 1, 1, 1))
    torch.testing.assert_close(found.probabilities(images), probs, rtol=1e-5, atol=1e-6)
    assert found.target(images, (4, 4), 0.2).shape == (2, 1, 4, 4)


@torch.no_grad()
def test_found_target_is_the_reference_non_antialiased_bilinear_resize(tiny_teachers):
    """The reference (torchvision 0.13.1) resized FOUND's sigmoid map with plain bilinear
    interpolation; ours by default too, and antialiasing (``antialias=True``) is a real change."""
    found = build_teachers(tiny_teachers)["found"]
    assert found.antialias is False
    images = torch.rand(3, 3, 64, 96)  # FOUND grid 8 x 12 -> a CLIP grid of 4 x 6, and an odd 5 x 7
    probs = found.probabilities(images)
    for size in ((4, 6), (5, 7)):
        expected = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(found.probabilities(images, size), expected, rtol=0, atol=1e-7)
        assert torch.equal(found.target(images, size, 0.2), (expected > 0.5).float())
    found.antialias = True
    antialiased = found.probabilities(images, (4, 6))
    torch.testing.assert_close(antialiased, F.interpolate(probs, size=(4, 6), mode="bilinear", antialias=True))
    assert not torch.allclose(antialiased, F.interpolate(probs, size=(4, 6), mode="bilinear"))


def test_training_images_are_resized_without_antialiasing_by_default(tmp_path, monkeypatch):
    """ToTensor then Resize(448) under torchvision 0.13.1: bilinear on the float image, no antialiasing."""
    from PIL import Image

    from clip_dinoiser.data import train_images

    from .conftest import random_image

    path = str(tmp_path / "square.png")
    Image.fromarray(random_image(96, 96, seed=3)).save(path)
    img = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float()[None] / 255
    monkeypatch.setattr(train_images.TF, "adjust_brightness", lambda x, factor: x)  # only the resize is compared
    for antialias in (False, True):
        out = TrainImages([path], size=48, antialias=antialias)[(0, 7)]
        expected = F.interpolate(img, size=(48, 48), mode="bilinear", align_corners=False, antialias=antialias)[0]
        assert any(torch.allclose(out, e, rtol=0, atol=1e-6) for e in (expected, expected.flip(-1))), antialias
    assert not torch.allclose(TrainImages([path], 48)[(0, 7)], TrainImages([path], 48, antialias=True)[(0, 7)])


def test_dino_pos_embed_follows_dino_interpolation():
    pos = torch.randn(1, 1 + 16, 8)
    assert dino_pos_embed(pos, (4, 4)) is pos
    out = dino_pos_embed(pos, (6, 3))
    grid = pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(6.1 / 4, 3.1 / 4), mode="bicubic")
    torch.testing.assert_close(out[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 18, 8))
    assert torch.equal(out[:, 0], pos[:, 0])


def test_distillation_losses_are_the_papers(tiny_teachers):
    logits = torch.tensor([[-0.5, 0.3], [0.9, -0.1]])
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    dino = build_teachers(tiny_teachers)["dino"]
    assert isinstance(dino, DINOTeacher)
    corr = dino.loss(logits, target)
    x = logits.clamp(min=0)
    manual = -(target * torch.log(torch.sigmoid(x)) + (1 - target) * torch.log(1 - torch.sigmoid(x))).mean()
    torch.testing.assert_close(corr, manual)


def test_images_sampling_and_augmentations_are_deterministic(tmp_path):
    files = list_images(write_images(str(tmp_path / "imgs"), 6))
    assert len(files) == 6 and all(f.endswith(".JPEG") for f in files)
    assert sample_subset(files, 4, 0) == sample_subset(files, 4, 0) and len(set(sample_subset(files, 4, 0))) == 4
    ds = TrainImages(files, size=48)
    a, b = ds[(3, 123)], ds[(3, 123)]
    assert a.shape == (3, 48, 48) and torch.equal(a, b)
    sampler = ResumableBatchSampler(5, 2, 3, seed=0)
    full = list(sampler)
    assert len(full) == 9 and [len(x) for x in full[:3]] == [2, 2, 1]
    assert list(ResumableBatchSampler(5, 2, 3, seed=0, start=4)) == full[4:]
    halves = [ResumableBatchSampler(5, 2, 3, seed=0, rank=r, world=2).batch(0) for r in (0, 1)]
    assert sorted(halves[0] + halves[1]) == sorted(full[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(str(tmp_path / "empty"))


def train_config(tmp_path, tiny_clip_file, teachers, **train):
    """A tiny distillation run's config (the tiny CLIP, ``teachers``, 6 images of 64 px, 2 epochs),
    its ``train`` settings changed by ``train``."""
    name, path = tiny_clip_file
    base = {"data": str(tmp_path / "imgs"), "output": str(tmp_path / "run"), "resume": None, "ds_size": 6,
            "batch_size": 2, "epochs": 2, "corr_lr": 5e-3, "found_lr": 1e-2, "milestones": [4], "step_lr_gamma": 0.1,
            "im_size": 64, "num_workers": 0, "seed": 0, "save_every": 2, "keep_checkpoints": 2, "stop_after": None}
    base.update(train)
    return {"model": {"clip": {"name": name, "pretrained": path}, "proj_dim": 16, "feats_idx": -3, "gamma": 0.2},
            "teachers": teachers, "train": base, "precision": "fp32"}


def test_losses_decrease_and_agreement_rises(tmp_path, tiny_clip_file, tiny_teachers):
    from clip_dinoiser.engine.training.train import build_distiller, make_optimizer

    files = list_images(write_images(str(tmp_path / "imgs"), 4))
    images = torch.stack([TrainImages(files, 64)[(i, i)] for i in range(4)])
    cfg = train_config(tmp_path, tiny_clip_file, tiny_teachers, corr_lr=2e-2)
    distiller: Distiller = build_distiller(cfg, torch.device("cpu"))
    optimizer, _ = make_optimizer(distiller.student.heads, distiller.teachers, cfg["train"])
    history = []
    for _ in range(40):
        total, scalars = distiller.losses(images)
        corr, obj, agree = scalars["loss/dino"], scalars["loss/found"], scalars["agreement/dino"]
        torch.testing.assert_close(total.detach(), corr + obj)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append((corr.item(), obj.item(), agree.item()))
    assert history[-1][0] < 0.9 * history[0][0]
    assert history[-1][1] < 0.8 * history[0][1]
    assert history[-1][2] > history[0][2]
    # Only the heads learn: CLIP stays frozen.
    assert all(not p.requires_grad for p in distiller.student.backbone.parameters())


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, tiny_clip_file, tiny_teachers):
    write_images(str(tmp_path / "imgs"), 6)
    full = train(train_config(tmp_path, tiny_clip_file, tiny_teachers, output=str(tmp_path / "full")),
                 torch.device("cpu"))
    cut = train_config(tmp_path, tiny_clip_file, tiny_teachers, output=str(tmp_path / "cut"), stop_after=5)
    assert train(cut, torch.device("cpu")) is None
    # stop_after that is not a multiple of save_every still saves its last iteration
    assert sorted(os.listdir(tmp_path / "cut" / "checkpoints")) == ["iter_0000004.pt", "iter_0000005.pt"]
    resumed_cfg = copy.deepcopy(cut)
    resumed_cfg["train"].update(resume=str(tmp_path / "cut"), stop_after=None)
    resumed = train(resumed_cfg, torch.device("cpu"))
    a, b = load_heads_state(full), load_heads_state(resumed)
    assert set(a) == {"obj_proj.weight", "obj_proj.bias", "bkg_decoder.weight", "bkg_decoder.bias"}
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The saved heads load unchanged into the inference model.
    name, path = tiny_clip_file
    model = build_model({"name": "clip_dinoiser", "clip": {"name": name, "pretrained": path}, "proj_dim": 16,
                         "checkpoint": full})
    assert torch.equal(model.heads.obj_proj.weight, a["obj_proj.weight"])
    init = train_config(tmp_path, tiny_clip_file, tiny_teachers)
    untrained = build_model({**init["model"], "checkpoint": None}).heads.obj_proj.weight
    assert not torch.equal(a["obj_proj.weight"], untrained)


def test_dino_maskclip_pools_with_teacher_correlations(tiny_clip_file, tiny_teachers):
    from clip_dinoiser.models.pooling import guided_pooling

    name, path = tiny_clip_file
    model = build_model({"name": "dino_maskclip", "clip": {"name": name, "pretrained": path},
                         "teachers": tiny_teachers})
    model.set_vocabulary(["cat", "background"])
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
        dense = model.backbone(images).dense
        pooled = guided_pooling(dense, model.dino.correlations(images), 0.2)
        expected = model.text(pooled, 100.0).softmax(1)
        fg = model.found.probabilities(images, (4, 4))[:, 0] > 0.5
        unsure = expected.amax(1) < 0.99
        expected[:, 1][unsure & ~fg] = 1.0
    torch.testing.assert_close(out, expected)


@pytest.mark.slow  # tool processes, ~15-25 s: the default run's budget (README: Test)
def test_train_cli_runs_and_reports_user_errors(tmp_path, tiny_clip_file, tiny_teachers):
    import json

    from .conftest import TINY_CLIP_CFG

    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CLIP_CFG))
    write_images(str(tmp_path / "imgs"), 4)
    t = tiny_teachers
    common = [f"model.clip.name={tmp_path / 'tiny.json'}", f"model.clip.pretrained={tiny_clip_file[1]}",
              "model.proj_dim=16", "device=cpu", "train.im_size=64", "train.batch_size=2", "train.epochs=1",
              "train.num_workers=1", f"teachers.dino.pretrained={t['dino']['pretrained']}",
              f"teachers.found.pretrained={t['found']['pretrained']}",
              f"teachers.found.decoder={t['found']['decoder']}",
              *[f"+teachers.{k}.kwargs.{n}={v}" for k in ("dino", "found") for n, v in t[k]["kwargs"].items()]]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools/train.py"), f"train.data={tmp_path / 'imgs'}",
                        f"train.output={tmp_path / 'run'}", *common], capture_output=True, text=True, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ("config.yaml", "train.log", "last.pt"):
        assert (tmp_path / "run" / f).exists(), f
    assert set(load_heads_state(str(tmp_path / "run" / "last.pt"))) == {
        "obj_proj.weight", "obj_proj.bias", "bkg_decoder.weight", "bkg_decoder.bias"}
    (tmp_path / "empty").mkdir()
    for override, message in [(f"train.data={tmp_path / 'empty'}", "error: no images"),
                              ("teachers.found.decoder=nothing.pt", "error: FOUND decoder weights not found")]:
        args = [f"train.data={tmp_path / 'imgs'}", f"train.output={tmp_path / 'run2'}", *common, override]
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools/train.py"), *args], capture_output=True,
                           text=True, cwd=tmp_path, timeout=300)
        assert r.returncode == 2 and r.stderr.startswith(message) and "Traceback" not in r.stderr, r.stderr[-1500:]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.resume=missing_run"], "error: run folder to resume not found: missing_run (train.resume)"),
        (["train.resume=empty_run"], "error: empty_run/config.yaml not found: cannot resume a run without its"),
        (["train.output=taken"], "exists and is not a folder"),
        (["train.data=no_images"], "error: training image folder not found: no_images (train.data)"),
        (["teachers.found.decoder=nothing.pt"], "error: FOUND decoder weights not found: nothing.pt"),
        (["teachers.dino.pretrained=weights/dino.pth"], "error: teacher weights not found: weights/dino.pth"),
        (["model.clip.pretrained=weights/clip.pt"], "error: CLIP checkpoint not found: weights/clip.pt"),
    ],
)
def test_train_cli_checks_every_path_before_loading_a_model(tmp_path, overrides, message):
    """Teachers are hub tags here: had a model been loaded first, the offline machine would fail differently."""
    (tmp_path / "imgs").mkdir()
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "decoder.pt").write_bytes(b"x")
    args = ["train.data=imgs", "train.output=run", "teachers.found.decoder=decoder.pt", "device=cpu", *overrides]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools/train.py"), *args], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and message in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["decoder.pt", "empty_run", "imgs", "taken"]  # no run folder made


@pytest.mark.slow
def test_torchrun_two_processes_train_like_one(tmp_path, tiny_clip_file, tiny_teachers):
    """DDP on gloo: each process takes half of every batch; the averaged gradients equal the
    single-process ones, so the heads agree to float rounding.

    AdamW's first step is lr * g / (|g| + 1e-8): for an entry whose gradient is ~1e-7, the
    gradients' float rounding (5 % relative there: batch of 2 vs two batches of 1, measured)
    moves the weight by up to ~lr * 0.004. corr_lr 1e-3 keeps that under the 1e-5 tolerance;
    at 1e-2 one of 9,216 entries differed by 3.5e-5."""
    import json

    from .conftest import TINY_CLIP_CFG

    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CLIP_CFG))
    write_images(str(tmp_path / "imgs"), 4)
    t = tiny_teachers
    args = [f"train.data={tmp_path / 'imgs'}", f"model.clip.name={tmp_path / 'tiny.json'}",
            f"model.clip.pretrained={tiny_clip_file[1]}", "model.proj_dim=16", "device=cpu", "train.im_size=64",
            "train.batch_size=2", "train.epochs=2", "train.num_workers=0", "train.corr_lr=1e-3",
            f"teachers.dino.pretrained={t['dino']['pretrained']}",
            f"teachers.found.pretrained={t['found']['pretrained']}", f"teachers.found.decoder={t['found']['decoder']}",
            *[f"+teachers.{k}.kwargs.{n}={v}" for k in ("dino", "found") for n, v in t[k]["kwargs"].items()]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, os.path.join(ROOT, "tools/train.py"), *args,
                          f"train.output={tmp_path / 'one'}"], capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29544",
                          os.path.join(ROOT, "tools/train.py"), *args, f"train.output={tmp_path / 'two'}"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_heads_state(str(tmp_path / "one" / "last.pt")), load_heads_state(str(tmp_path / "two" / "last.pt"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
