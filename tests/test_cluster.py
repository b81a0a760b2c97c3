"""MaskCLIP's robustness protocol (corrupted evaluation, the robustness table) and sweeps that
run on a cluster: hydra's submitit launcher, and torchrun across two "nodes" on this machine."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clip_dinoiser.data.benchmarks import BENCHMARKS, eval_pipeline
from clip_dinoiser.data.corruptions import corrupt, seed_for

from .conftest import TINY_CLIP_CFG
from .synthetic_data import make_benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["slide.scale=[256,64]", "slide.crop=[64,64]", "slide.stride=[32,32]", "slide.window_batch=8",
         "num_workers=0", "progress=false"]


@pytest.fixture()
def tiny(tmp_path, tiny_clip_file, tiny_heads_file) -> list[str]:
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CLIP_CFG))
    return [f"model.clip.name={tmp_path / 'tiny.json'}", f"model.clip.pretrained={tiny_clip_file[1]}",
            f"model.checkpoint={tiny_heads_file}", "model.proj_dim=16", "device=cpu"]


def eval_tool(*args: str, cwd, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval.py"), *args, *(launcher or [])],
                          capture_output=True, text=True, cwd=cwd, timeout=600, env=env)


def miou(folder) -> float:
    results = json.loads((folder / "results.json").read_text())
    return next(v["mIoU"] for v in results.values() if isinstance(v, dict))


def test_the_corruption_acts_on_the_loaded_image_before_the_resize_and_clean_is_unchanged(tmp_path):
    """The pipeline's image equals mmcv's own load -> our corrupt (RGB, seeded by the file name)
    -> mmcv's keep-ratio resize, computed directly; without a corruption the pipeline holds no
    extra step and its image equals load -> resize."""
    import mmcv
    from mmengine.dataset import Compose

    root = make_benchmark(str(tmp_path), "voc", n=2)
    info = {"img_path": os.path.join(root, "JPEGImages", "2007_000000.jpg"),
            "seg_map_path": os.path.join(root, "SegmentationClass", "2007_000000.png"), "reduce_zero_label": False,
            "seg_fields": []}
    bgr = mmcv.imread(info["img_path"])
    out = Compose(eval_pipeline(21, (256, 64), ("gaussian_noise", 3)))(dict(info))
    rgb = corrupt(bgr[..., ::-1].copy(), "gaussian_noise", 3, seed_for("2007_000000.jpg"))
    expected = mmcv.imrescale(np.ascontiguousarray(rgb[..., ::-1]), (256, 64), interpolation="bilinear")[..., ::-1]
    assert np.array_equal(out["img"], expected)
    clean = Compose(eval_pipeline(21, (256, 64)))(dict(info))
    assert np.array_equal(clean["img"], mmcv.imrescale(bgr, (256, 64), interpolation="bilinear")[..., ::-1])
    assert len(eval_pipeline(21, (256, 64))) == len(eval_pipeline(21, (256, 64), ("spatter", 1))) - 1


@pytest.mark.slow  # tool processes, ~15-25 s: the default run's budget (README: Test)
def test_a_corrupted_evaluation_is_reproducible_across_runs_and_loader_processes(tmp_path, tiny):
    root = make_benchmark(str(tmp_path / "data"), "voc", n=3)
    args = ["data=voc", f"data.root={root}", "data.corruption=speckle_noise", "data.severity=4", *SMALL, *tiny]
    runs = [eval_tool(*args, f"output=r{i}", *extra, cwd=tmp_path) for i, extra in
            enumerate([[], ["num_workers=2"]])]  # in this process, and in two loader processes
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    a, b = (json.loads((tmp_path / f"r{i}" / "results.json").read_text())["voc"] for i in range(2))
    assert a["mIoU"] == b["mIoU"] and a["class_IoU"] == b["class_IoU"]
    bad = eval_tool("data=voc", f"data.root={root}", "data.corruption=frost", "output=bad", *SMALL, *tiny, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: data.corruption=frost: unknown corruption")


@pytest.mark.slow
def test_the_robustness_sweep_writes_its_table_and_plot(tmp_path, tiny):
    root = make_benchmark(str(tmp_path / "data"), "voc", n=2)
    r = eval_tool("-m", "data=voc", f"data.root={root}", "model=clip_dinoiser,maskclip",
                  "corruption=clean,gaussian_blur_1,gaussian_blur_5,jpeg_compression_2", "hydra.sweep.dir=rob",
                  *SMALL, *tiny, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rob = tmp_path / "rob"
    with open(rob / "robustness.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(row["model"], row["corruption"]) for row in rows] == [
        ("clip_dinoiser", "gaussian_blur"), ("clip_dinoiser", "jpeg_compression"), ("maskclip", "gaussian_blur"),
        ("maskclip", "jpeg_compression")]
    jobs = {}
    for job in sorted(p for p in rob.iterdir() if p.name.isdigit()):
        settings = json.loads(json.dumps(__import__("yaml").safe_load((job / "config.yaml").read_text())))
        jobs[(settings["model"]["name"], settings["data"]["corruption"], settings["data"]["severity"])] = miou(job)
    for row in rows:
        model, name = row["model"], row["corruption"]
        assert float(row["clean"]) == jobs[(model, None, 1)]
        for s in range(1, 6):
            value = row[f"severity {s}"]
            assert (float(value) == jobs[(model, name, s)]) if value else (model, name, s) not in jobs
    png = Image.open(rob / "robustness.png")
    assert png.size[0] > 600 and np.asarray(png.convert("L")).std() > 5
    assert "## Robustness" in (rob / "summary.md").read_text()


@pytest.mark.slow
def test_a_submitit_local_sweep_gives_the_results_of_the_plain_multirun(tmp_path, tiny):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason='needs pip install -e ".[cluster]"')
    root = make_benchmark(str(tmp_path / "data"), "voc", n=2)
    args = ["-m", "data=voc", f"data.root={root}", "model.gamma=0.1,0.3", *SMALL, *tiny]
    plain = eval_tool(*args, "hydra.sweep.dir=plain", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-2000:]
    local = eval_tool(*args, "hydra.sweep.dir=local", launcher=["hydra/launcher=submitit_local"], cwd=tmp_path)
    assert local.returncode == 0, local.stderr[-2000:]
    for job in ("0", "1"):
        a = json.loads((tmp_path / "plain" / job / "results.json").read_text())["voc"]
        b = json.loads((tmp_path / "local" / job / "results.json").read_text())["voc"]
        assert a["mIoU"] == b["mIoU"] and a["class_IoU"] == b["class_IoU"]
    assert (tmp_path / "local" / "summary.csv").read_text() == (tmp_path / "plain" / "summary.csv").read_text()


@pytest.mark.slow
def test_torchrun_on_two_nodes_equals_one_process(tmp_path, tiny):
    """Two torchrun launches with --nnodes=2 (rendezvous on localhost), one process each: the
    corrupted evaluation (seeded per image, so ranks agree) equals the single process's."""
    root = make_benchmark(str(tmp_path / "data"), "voc20", n=4)
    args = ["data=voc20", f"data.root={root}", "data.corruption=shot_noise", "data.severity=2", *SMALL, *tiny]
    one = eval_tool(*args, "output=one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                               "--nproc_per_node=1", "--master_addr=127.0.0.1", "--master_port=29571",
                               os.path.join(ROOT, "tools", "eval.py"), *args, "output=two"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs[0][1][-2000:] + outputs[1][1][-2000:]
    a = json.loads((tmp_path / "one" / "results.json").read_text())["voc20"]
    b = json.loads((tmp_path / "two" / "results.json").read_text())["voc20"]
    assert a["mIoU"] == b["mIoU"] and a["class_IoU"] == b["class_IoU"] and b["images"] == 4
    assert BENCHMARKS["voc20"].num_classes == len(b["class_IoU"])
