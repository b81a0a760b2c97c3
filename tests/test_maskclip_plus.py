"""MaskCLIP+ on our annotators (tools/train_target.py): pseudo-labels, the text classifier, a
target that learns an exact annotator, label files never opened, resume and torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clip_dinoiser.engine.job.signals import Interrupted

from .conftest import TINY_CLIP_CFG, random_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TARGET = {"backbone": "resnet101c", "pretrained": None,
               "kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 32], "stem_width": 8}}
COLORS = np.array([[220, 30, 30], [30, 200, 40], [40, 60, 230]], np.uint8)  # one class each
NAMES = ["red thing", "green thing", "blue thing"]


class ColorAnnotator(nn.Module):
    """An exact annotator for the colour-coded images below: each pixel's class is its nearest
    colour. It has the segmenters' interface (``text``, ``set_vocabulary``, ``forward``)."""

    def __init__(self, text: nn.Module) -> None:
        super().__init__()
        self.text = text
        self.register_buffer("colors", torch.tensor(COLORS, dtype=torch.float32) / 255)

    def set_vocabulary(self, names) -> None:
        self.text.set_vocabulary(names)

    def forward(self, images):
        distance = ((images[:, None] - self.colors[None, :, :, None, None]) ** 2).sum(2)  # B x K x H x W
        return (-50 * distance).softmax(dim=1)


def color_annotator(cfg):
    """``annotator.name=tests.test_maskclip_plus.color_annotator``: the text tower of ``cfg.clip``."""
    from clip_dinoiser.models import build_clip

    _, text = build_clip(cfg)
    return ColorAnnotator(text)


def color_image(seed: int, size=(48, 64)) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of the three colours (with a little noise) and their labels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 3, (3, 4))
    labels = np.kron(small, np.ones((size[0] // 3, size[1] // 4), np.int64))
    image = np.clip(COLORS[labels].astype(int) + rng.integers(-12, 12, (*size, 3)), 0, 255).astype(np.uint8)
    return image, labels.astype(np.uint8)


@pytest.fixture()
def tiny(tmp_path, tiny_clip_file) -> list[str]:
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CLIP_CFG))
    target = [f"target.{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY_TARGET.items() if k != "kwargs"]
    target += [f"+target.kwargs.{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY_TARGET["kwargs"].items()]
    return [f"annotator.clip.name={tmp_path / 'tiny.json'}", f"annotator.clip.pretrained={tiny_clip_file[1]}",
            "device=cpu", "train.num_workers=0", "train.crop=[48,48]", "train.scale=[64,48]", *target]


def tool(name: str, *args: str, cwd, env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


def torchrun(*args: str, cwd, port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                           os.path.join(ROOT, "tools", "train_target.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env=env)


def write_color_folder(folder, n: int, seed: int = 0) -> list[np.ndarray]:
    os.makedirs(folder, exist_ok=True)
    labels = []
    for i in range(n):
        image, label = color_image(seed + i)
        Image.fromarray(image).save(os.path.join(folder, f"img_{i:03d}.png"))
        labels.append(label)
    return labels


def test_pseudo_labels_are_the_annotators_argmax_on_the_crop(tiny_clip_file, tiny_heads_file):
    """Computed independently: the annotator on each crop alone, its probabilities resized with
    F.interpolate and argmax'ed in numpy; padding and pixels below the threshold ignored."""
    from clip_dinoiser.engine.training.target_train import IGNORE, pseudo_labels
    from clip_dinoiser.models import build_model

    name, path = tiny_clip_file
    annotator = build_model({"name": "clip_dinoiser", "clip": {"name": name, "pretrained": path},
                             "checkpoint": tiny_heads_file, "proj_dim": 16})
    annotator.set_vocabulary(["cat", "dog", "background"])
    torch.manual_seed(0)
    images = torch.rand(2, 3, 48, 64)
    valid = torch.ones(2, 48, 64, dtype=torch.bool)
    valid[1, 40:] = False  # padding at the bottom of the second crop
    with torch.no_grad():
        labels = pseudo_labels(annotator(images), (48, 64), valid, conf_thresh=0.6)
    for i in range(2):
        with torch.no_grad():
            probs = F.interpolate(annotator(images[i : i + 1]), size=(48, 64), mode="bilinear", align_corners=False)
        p = probs[0].numpy()
        expected = p.argmax(0)
        expected[p.max(0) < 0.6] = IGNORE
        expected[~valid[i].numpy()] = IGNORE
        assert np.array_equal(labels[i].numpy(), expected)
    assert (labels == IGNORE).any() and (labels != IGNORE).any()


def test_the_targets_classifier_is_the_vocabularys_text_embeddings(tiny_clip_file):
    from clip_dinoiser.config import ModelConfig, TargetConfig, parse
    from clip_dinoiser.models import build_clip
    from clip_dinoiser.models.target import TargetModel, build_target

    name, path = tiny_clip_file
    _, text = build_clip(parse(ModelConfig, {"clip": {"name": name, "pretrained": path}}, "model"))
    torch.manual_seed(0)
    target = build_target(TargetConfig(**TINY_TARGET), text.dim)
    model = TargetModel(target, text).eval()
    model.set_vocabulary(["cat", "dog"])
    raw = torch.stack([text.classes([n]).embeddings[0] for n in ("cat", "dog")])
    torch.testing.assert_close(target.class_embeddings, F.normalize(raw, dim=-1))
    images = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        feats = target.embed(images)
        by_hand = torch.einsum("bdhw,kd->bkhw", feats, target.class_embeddings)  # 1x1 conv, no bias
        torch.testing.assert_close(target(images), by_hand, rtol=1e-5, atol=1e-5)
        before = {k: v.clone() for k, v in target.state_dict().items()}
        model.set_vocabulary(["cat", "dog", "horse"])  # a new vocabulary: new classes, same weights
        assert model(images).shape[1] == 3 and model.class_names == ["cat", "dog", "horse"]
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


@pytest.mark.slow
def test_target_learns_an_exact_annotator_and_eval_scores_it_as_numpy(tmp_path, tiny):
    """Trained on colour-coded images labelled by the exact colour annotator, the target
    reproduces the labels of held-out images (agreement >= 0.9), and tools/eval.py's mIoU on
    them equals a numpy computation on its saved predictions."""
    write_color_folder(tmp_path / "train", 12, seed=0)
    (tmp_path / "classes.txt").write_text("\n".join(NAMES) + "\n")
    r = tool("train_target.py", "annotator.name=tests.test_maskclip_plus.color_annotator", "train.benchmark=folder",
             f"train.data={tmp_path / 'train'}", f"train.vocabulary={tmp_path / 'classes.txt'}", "train.batch_size=4",
             "train.iterations=120", "train.lr=0.05", "train.photometric=false", "train.output=run", *tiny,
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {"config.yaml", "train.log", "last.pt", "metrics.jsonl"} <= set(os.listdir(tmp_path / "run"))
    curves = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(curves) == 120 and curves[-1]["loss"] < 0.5 * curves[0]["loss"]
    assert curves[0]["pseudo/ignored"] < 0.5 and abs(sum(curves[0][f"classes/{n}"] for n in NAMES) - 1) < 1e-5

    held_out = tmp_path / "bench"
    labels = write_color_folder(held_out / "images", 4, seed=100)
    os.makedirs(held_out / "annotations")
    for i, label in enumerate(labels):
        Image.fromarray(label).save(held_out / "annotations" / f"img_{i:03d}.png")
    (tmp_path / "tiny.json").exists()
    r = tool("eval.py", "model=target", "model.checkpoint=run/last.pt", f"model.clip.name={tmp_path / 'tiny.json'}",
             f"model.clip.pretrained={tiny[1].split('=', 1)[1]}", "device=cpu", "num_workers=0", "output=ev",
             "save_predictions=true", "data.name=colors", f"data.root={held_out}",
             f"+data.benchmark={{classes:{tmp_path / 'classes.txt'},img_suffix:.png}}", "slide.scale=[64,48]",
             "slide.crop=[48,48]", "slide.stride=[24,24]", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    reported = json.loads((tmp_path / "ev" / "results.json").read_text())["colors"]["mIoU"]
    conf = np.zeros((3, 3), np.int64)
    agree = []
    for i, label in enumerate(labels):
        pred = np.asarray(Image.open(tmp_path / "ev" / "predictions" / "colors" / f"img_{i:03d}.png")).astype(int)
        np.add.at(conf, (label.astype(int).ravel(), pred.ravel()), 1)
        agree.append((pred == label).mean())
    inter = np.diag(conf)
    assert reported == pytest.approx(float(np.mean(inter / (conf.sum(0) + conf.sum(1) - inter)) * 100), abs=1e-9)
    assert np.mean(agree) >= 0.9, agree


def voc_without_labels(data_dir, n: int = 4) -> str:
    """A VOC 2012 folder in mmseg's layout whose label folder holds no readable file: every label
    path is a folder (opening it fails)."""
    root = os.path.join(data_dir, "VOCdevkit", "VOC2012")
    os.makedirs(os.path.join(root, "ImageSets", "Segmentation"))
    ids = [f"2007_{i:06d}" for i in range(n)]
    for i, image_id in enumerate(ids):
        os.makedirs(os.path.join(root, "JPEGImages"), exist_ok=True)
        Image.fromarray(random_image(40, 56, seed=i)).save(os.path.join(root, "JPEGImages", f"{image_id}.jpg"))
        os.makedirs(os.path.join(root, "SegmentationClass", f"{image_id}.png"))  # not a file
    with open(os.path.join(root, "ImageSets", "Segmentation", "train.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return root


def target_config(tmp_path, tiny_clip_file, tiny_heads_file, root, **train):
    """A tiny MaskCLIP+ run's config (voc20 at ``root``, the tiny annotator and target, 4 iterations),
    its ``train`` settings changed by ``train``."""
    name, path = tiny_clip_file
    settings = {"benchmark": "voc20", "data": root, "output": str(tmp_path / "run"), "batch_size": 2,
                "iterations": 4, "num_workers": 0, "crop": [32, 32], "scale": [48, 32], "save_every": 2,
                "self_train_from": 4, **train}
    return {"annotator": {"name": "clip_dinoiser", "clip": {"name": name, "pretrained": path},
                          "checkpoint": tiny_heads_file, "proj_dim": 16},
            "target": dict(TINY_TARGET), "train": settings, "precision": "fp32"}


def test_label_files_are_never_opened_and_resume_after_ctrl_c_equals_an_uninterrupted_run(
        tmp_path, tiny_clip_file, tiny_heads_file, monkeypatch):
    from clip_dinoiser import readers
    from clip_dinoiser.engine.training import target_train
    from clip_dinoiser.readers import read_weights

    root = voc_without_labels(str(tmp_path / "data"))
    opened = []
    monkeypatch.setattr(readers, "read_label", lambda path, *a, **k: opened.append(path) or 1 / 0)
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(str(fp)) or real_open(fp, *a, **k))
    cpu = torch.device("cpu")
    full = target_train.train(
        target_config(tmp_path, tiny_clip_file, tiny_heads_file, root, output=str(tmp_path / "full")), cpu)
    assert not [p for p in opened if "SegmentationClass" in p]  # images were read, labels never

    calls = {"n": 0}
    losses = target_train.TargetTraining.losses

    def interrupted(self, batch, module):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during iteration 3: it finishes and is saved
        return losses(self, batch, module)

    monkeypatch.setattr(target_train.TargetTraining, "losses", interrupted)
    cut = target_config(tmp_path, tiny_clip_file, tiny_heads_file, root, output=str(tmp_path / "cut"))
    with pytest.raises(Interrupted) as stopped:
        target_train.train(cut, cpu)
    assert stopped.value.iteration == 3
    monkeypatch.setattr(target_train.TargetTraining, "losses", losses)
    resumed = target_train.train({**cut, "train": {**cut["train"], "resume": str(tmp_path / "cut")}}, cpu)
    a, b = read_weights(full, "a")["model_state_dict"], read_weights(resumed, "b")["model_state_dict"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # self-training from 4 included


@pytest.mark.slow
def test_torchrun_two_processes_train_the_target_like_one(tmp_path, tiny):
    """DDP on gloo with frozen BatchNorm statistics (target.norm_eval: per-process batch statistics
    would differ from the global batch's on the CPU, where SyncBatchNorm is not available)."""
    write_color_folder(tmp_path / "imgs", 4, seed=0)
    (tmp_path / "classes.txt").write_text("\n".join(NAMES) + "\n")
    args = ["annotator.name=tests.test_maskclip_plus.color_annotator", "train.benchmark=folder",
            f"train.data={tmp_path / 'imgs'}", f"train.vocabulary={tmp_path / 'classes.txt'}", "train.batch_size=2",
            "train.iterations=3", "train.lr=0.01", "target.norm_eval=true", "train.photometric=false", *tiny]
    one = tool("train_target.py", *args, "train.output=one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(*args, "train.output=two", cwd=tmp_path, port=29561)
    assert two.returncode == 0, two.stderr[-3000:]
    from clip_dinoiser.readers import read_weights

    a = read_weights(str(tmp_path / "one" / "last.pt"), "one")["model_state_dict"]
    b = read_weights(str(tmp_path / "two" / "last.pt"), "two")["model_state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
