"""Inference sweeps (one network pass, many settings), saved predictions, the summary table and plot."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from clip_dinoiser.config import SlideConfig
from clip_dinoiser.data.benchmarks import BENCHMARKS
from clip_dinoiser.engine.evaluation.evaluate import Evaluator
from clip_dinoiser.engine.evaluation.sweep import decoding_fields, point_name, sweep_points
from clip_dinoiser.errors import ConfigError
from clip_dinoiser.models import build_model

from .conftest import TINY_CLIP_CFG
from .synthetic_data import make_benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLIDE = SlideConfig(scale=(256, 64), crop=(64, 64), stride=(32, 32), window_batch=8)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_sweep_points_grid_and_checks():
    points = sweep_points({"model.gamma": [0.1, 0.3], "model.bg_refine": [True, None]})
    assert points == [{"model.gamma": 0.1, "model.bg_refine": True}, {"model.gamma": 0.1, "model.bg_refine": None},
                      {"model.gamma": 0.3, "model.bg_refine": True}, {"model.gamma": 0.3, "model.bg_refine": None}]
    assert point_name(points[1]) == "gamma=0.1,bg_refine=null" and decoding_fields(points[1]) == {"gamma": 0.1}
    assert sweep_points(None) == [{}]
    with pytest.raises(ConfigError, match="model.feats_idx cannot be swept in one pass"):
        sweep_points({"model.feats_idx": [-2, -3]})
    with pytest.raises(ConfigError, match=r"sweep model.gamma='x': must be a finite number in \[0, 1\]"):
        sweep_points({"model.gamma": ["x"]})
    with pytest.raises(ConfigError, match=r"sweep model.gamma=nan: must be a finite number"):
        sweep_points({"model.gamma": [float("nan")]})
    with pytest.raises(ConfigError, match=r"sweep model.maskclip.temperature=0: must be a finite number > 0"):
        sweep_points({"model.maskclip.temperature": [0]})
    with pytest.raises(ConfigError, match=r"sweep model.gamma: the value 0.1 is given twice"):
        sweep_points({"model.gamma": [0.1, 0.10]})


def test_sweep_equals_separate_runs_pixel_for_pixel(tmp_path, model_cfg):
    """Every setting of a one-pass sweep gives the predictions and the scores of a run with that
    setting alone (its own model, its own network passes)."""
    root = make_benchmark(str(tmp_path), "voc", n=4)
    bench = BENCHMARKS["voc"]
    model = build_model(model_cfg)
    points = sweep_points({"model.gamma": [0.0, 0.2, 0.5], "model.bg_refine": [True, False],
                           "model.maskclip.pd_thresh": [0.0, 0.3]})
    evaluator = Evaluator(slide=SLIDE, num_workers=0, progress=False)
    settings = [evaluator.setting(model, bench, None, p["model.bg_refine"], **decoding_fields(p)) for p in points]
    swept_preds = [{} for _ in points]
    writers = [lambda pred, gt, meta, i=i: swept_preds[i].__setitem__(meta["img_path"], pred.clone())
               for i in range(len(points))]
    swept = evaluator.evaluate_settings(model, bench, root, settings, writers)
    assert swept[0].windows == swept[-1].windows  # one pass: the windows ran once for all settings
    distinct = set()
    for p, result, preds in zip(points, swept, swept_preds):
        alone = build_model(model_cfg)
        alone.decoding = replace(alone.decoding, **decoding_fields(p))
        own: dict = {}

        def keep(pred, gt, meta, own=own):
            own[meta["img_path"]] = pred.clone()

        setting = evaluator.setting(alone, bench, None, p["model.bg_refine"])
        single = evaluator.evaluate_settings(alone, bench, root, [setting], [keep])
        assert single[0].miou == result.miou and _same(single[0].class_iou, result.class_iou), p
        assert preds.keys() == own.keys() and all(torch.equal(preds[k], own[k]) for k in own), p
        distinct.add(round(result.miou, 9))
    assert len(distinct) > 2  # the settings really differ


def _tool(*args, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval.py"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def _rescore(pred_dir: str, ann_dir: str, k: int, reduce_zero_label: bool) -> float:
    """mIoU of saved prediction PNGs against the dataset's own label files (numpy only)."""
    conf = np.zeros((k, k), np.int64)
    for name in sorted(os.listdir(ann_dir)):
        gt = np.asarray(Image.open(os.path.join(ann_dir, name))).astype(np.int64)
        pred = np.asarray(Image.open(os.path.join(pred_dir, name))).astype(np.int64)
        if reduce_zero_label:  # both in the label files' values: 0 ignored, class c stored as c + 1
            gt, pred = np.where(gt == 0, 256, gt) - 1, pred - 1
            gt[gt == 254] = 255
        valid = gt != 255
        np.add.at(conf, (gt[valid], pred[valid]), 1)
    inter = np.diag(conf).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmean(inter / (conf.sum(0) + conf.sum(1) - inter)) * 100)


def test_cli_sweep_writes_runs_summary_and_predictions_that_rescore_exactly(tmp_path, tiny_clip_file,
                                                                           tiny_heads_file):
    root = make_benchmark(str(tmp_path / "data"), "voc20", n=3)  # reduce_zero_label: saved values are +1
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CLIP_CFG))
    r = _tool("data=voc20", f"data.root={root}", "output=out", "num_workers=0", "save_predictions=true",
              "save_examples=2", "sweep={model.gamma:[0.1,0.2,0.4]}", f"model.clip.name={tmp_path / 'tiny.json'}",
              f"model.clip.pretrained={tiny_clip_file[1]}", f"model.checkpoint={tiny_heads_file}",
              "model.proj_dim=16", "device=cpu", "slide.scale=[256,64]", "slide.crop=[64,64]",
              "slide.stride=[32,32]", "slide.window_batch=8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out"
    runs = ["gamma=0.1", "gamma=0.2", "gamma=0.4"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == runs
    reported = {}
    for run in runs:
        results = json.loads((out / run / "results.json").read_text())
        reported[run] = results["voc20"]["mIoU"]
        pred_dir = str(out / run / "predictions" / "voc20")
        assert reported[run] == _rescore(pred_dir, os.path.join(root, "SegmentationClass"), 20, True)
        assert len(os.listdir(out / run / "examples" / "voc20")) == 2
        assert float(str(run).split("=")[1]) == pytest.approx(
            yaml.safe_load((out / run / "config.yaml").read_text())["model"]["gamma"])
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["run", "model.gamma", "voc20", "average"]
    assert [row["run"] for row in rows] == [*runs, "paper"]
    for row in rows[:-1]:
        assert float(row["voc20"]) == reported[row["run"]] and float(row["average"]) == reported[row["run"]]
        assert float(row["model.gamma"]) == float(row["run"].split("=")[1])
    assert float(rows[-1]["voc20"]) == BENCHMARKS["voc20"].paper_miou
    assert "| run | model.gamma | voc20 | average |" in (out / "summary.md").read_text()
    png = Image.open(out / "summary.png")
    assert png.size[0] >= 600 and png.size[1] >= 350 and np.asarray(png.convert("L")).std() > 5  # drawn, not blank


@pytest.mark.slow
def test_training_multirun_trains_evaluates_and_summarizes_each_run(tmp_path, tiny_clip_file, tiny_teachers):
    """tools/train.py -m model.feats_idx=-2,-3: two runs in their own folders below the sweep folder,
    each scored at its end, one summary listing both with the swept value."""
    from .conftest import write_images

    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CLIP_CFG))
    write_images(str(tmp_path / "imgs"), 4)
    root = make_benchmark(str(tmp_path / "data"), "voc", n=2)
    t = tiny_teachers
    args = ["-m", "model.feats_idx=-2,-3", f"train.data={tmp_path / 'imgs'}", "hydra.sweep.dir=sweep",
            f"model.clip.name={tmp_path / 'tiny.json'}", f"model.clip.pretrained={tiny_clip_file[1]}",
            "model.proj_dim=16", "device=cpu", "train.im_size=64", "train.batch_size=2", "train.epochs=1",
            "train.num_workers=0", f"teachers.dino.pretrained={t['dino']['pretrained']}",
            f"teachers.found.pretrained={t['found']['pretrained']}", f"teachers.found.decoder={t['found']['decoder']}",
            *[f"+teachers.{k}.kwargs.{n}={v}" for k in ("dino", "found") for n, v in t[k]["kwargs"].items()],
            "eval.enabled=true", "eval.data.name=voc", f"eval.data.root={root}", "eval.num_workers=0",
            "eval.slide.scale=[256,64]", "eval.slide.crop=[64,64]", "eval.slide.stride=[32,32]"]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train.py"), *args], capture_output=True,
                       text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = tmp_path / "sweep"
    for job, feats_idx in (("0", -2), ("1", -3)):
        assert {"config.yaml", "last.pt", "results.json", "train.log"} <= set(os.listdir(sweep / job))
        assert yaml.safe_load((sweep / job / "config.yaml").read_text())["model"]["feats_idx"] == feats_idx
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(row["run"], row["model.feats_idx"]) for row in rows] == [("0", "-2"), ("1", "-3"), ("paper", "")]
    for row in rows[:2]:
        assert float(row["voc"]) == json.loads((sweep / row["run"] / "results.json").read_text())["voc"]["mIoU"]
    assert (sweep / "summary.png").stat().st_size > 1000
