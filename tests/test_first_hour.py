"""A new user's first hour: training curves and fine-tuning from given heads, readable summaries
of mixed runs, --help per tool."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from .conftest import write_images
from .test_train import train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_training_leaves_curves_and_starts_from_given_heads(tmp_path, tiny_clip_file, tiny_teachers):
    """train.init: the loss logged at iteration 1 is the loss of those heads on the first batch,
    computed apart (its own Distiller, the heads loaded from the file, the sampler's first batch)."""
    from clip_dinoiser.data.train_images import ResumableBatchSampler, TrainImages, list_images
    from clip_dinoiser.engine.training.train import build_distiller, train
    from clip_dinoiser.models import DINOiserHeads, load_heads, save_heads

    write_images(str(tmp_path / "imgs"), 4)
    torch.manual_seed(7)
    init = str(tmp_path / "init.pt")
    save_heads(DINOiserHeads(in_dim=64, proj_dim=16, kernel_size=3), init)
    cfg = train_config(tmp_path, tiny_clip_file, tiny_teachers, init=init, ds_size=None, epochs=2)
    last = train(cfg, torch.device("cpu"))
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "loss/dino", "loss/found", "agreement/dino", "target_positive/found", "lr/correlation",
                "lr/objectness"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[0]["lr/correlation"] == 5e-3 and rows[0]["lr/objectness"] == 1e-2

    distiller = build_distiller({**cfg, "train": {**cfg["train"], "init": None}}, torch.device("cpu"))
    load_heads(distiller.student.heads, init)
    files = list_images(str(tmp_path / "imgs"))
    batch = ResumableBatchSampler(len(files), 2, 2, 0).batch(0)
    images = torch.stack([TrainImages(files, 64)[item] for item in batch])
    with torch.no_grad():
        loss, _ = distiller.losses(images)
    assert rows[0]["loss"] == pytest.approx(loss.item(), rel=1e-6)

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["init"] == init and saved["model"]["checkpoint"] is None  # what was really used
    assert os.path.isfile(last)
    events = os.listdir(run / "tensorboard")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert events and [e.step for e in acc.Scalars("loss/dino")] == [1, 2, 3, 4]
    assert acc.Scalars("loss")[0].value == pytest.approx(rows[0]["loss"], rel=1e-6)


def test_summaries_of_mixed_runs_are_readable(tmp_path):
    """Eval and training runs in separate tables whose columns are the settings that vary among
    them; 5e-05 written as such; written beside the inputs; curves drawn from metrics.jsonl."""
    runs = tmp_path / "runs"
    base_eval = {"model": {"name": "clip_dinoiser", "gamma": 0.2}, "data": {"name": "voc"}, "output": "x"}
    for i, gamma in enumerate((0.1, 0.3)):
        folder = runs / f"eval_{i}"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump({**base_eval, "model": {"name": "clip_dinoiser",
                                                                                    "gamma": gamma}}))
        (folder / "results.json").write_text(json.dumps({"voc": {"mIoU": 60.0 + i, "paper_mIoU": 62.1}}))
    for i, lr in enumerate((5e-5, 1e-4)):
        folder = runs / f"train_{i}"
        folder.mkdir(parents=True)
        settings = {"model": {"gamma": 0.2}, "train": {"corr_lr": lr, "epochs": 100, "output": str(folder)}}
        (folder / "config.yaml").write_text(yaml.safe_dump(settings))
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"iteration": it, "loss": 1.0 / it, "lr/x": lr}) + "\n"
                                                      for it in range(1, 6)))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "summarize.py"), str(runs)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "runs_summary"  # beside the input, not inside it
    assert not any(name.startswith("summary") for name in os.listdir(runs))
    md = (out / "summary.md").read_text()
    assert "## Evaluation runs\n\n| run | model.gamma | voc | average |" in md
    assert "## Training runs\n\n| run | train.corr_lr |" in md and "| train_0 | 5e-05 |" in md
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"run", "kind", "model.gamma", "voc", "average", "train.corr_lr"}
    for name in ("summary.png", "curves.png"):
        png = np.asarray(Image.open(out / name).convert("L"))
        assert png.shape[1] > 500 and png.std() > 5, name


@pytest.mark.parametrize(("tool", "keys"), [
    ("demo.py", ["image=???  (required)", "model.gamma=0.2", "# correlation threshold",
                 "model=clearclip|clip_dinoiser|dino_maskclip|maskclip|naclip|proxyclip|sclip|target"]),
    ("eval.py", ["data.corruption=null", "data=ade20k|all|", "corruption=clean|", "slide.stride=[224,224]"]),
    ("train.py", ["train.corr_lr=5e-05", "# the correlation head (obj_proj)", "teachers.found.decoder=released"]),
    ("train_target.py", ["train.lr=0.01", "annotator=clip_dinoiser|dino_maskclip|maskclip|maskclip_kspd"]),
])
def test_help_lists_the_tools_keys_defaults_and_comments(tmp_path, tool, keys):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), "--help"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    for key in keys:
        assert key in r.stdout, key
    if tool == "demo.py":
        assert "data." not in r.stdout and "teachers." not in r.stdout and "schema" not in r.stdout
    wrong = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), "slide.strid=3" if tool != "train.py"
                            else "train.lr=3"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert wrong.returncode == 2 and "unknown key" in wrong.stderr and " has: " in wrong.stderr
