"""Evaluation: the eight benchmarks on synthetic data in their real layouts, metrics, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from clip_dinoiser.data.benchmarks import BENCHMARKS, PAPER_ORDER, build_dataset
from clip_dinoiser.data.convert import CITYSCAPES_LUT, COCO_OBJECT_LUT, COCO_STUFF_LUT, apply_lut
from clip_dinoiser.engine.evaluation.evaluate import (
    area_stats,
    confusion_index,
    confusion_matrix,
    evaluate_benchmark,
    metrics_from_stats,
)
from clip_dinoiser.engine.evaluation.inference import SlideConfig, slide_inference, to_tensor
from clip_dinoiser.models import build_model, read_vocabulary_file

from .synthetic_data import make_all, make_benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLIDE = SlideConfig(scale=(256, 64), crop=(64, 64), stride=(32, 32), window_batch=8)
REDUCE_ZERO = {"voc20", "context59", "ade20k"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_all(str(tmp_path_factory.mktemp("data")))


def independent_miou(model, root: str, name: str) -> float:
    """Re-derive the paper's protocol with plain cv2/numpy: read, resize, slide, confusion matrix."""
    bench = BENCHMARKS[name]
    img_dir, ann_dir = os.path.join(root, bench.img_dir), os.path.join(root, bench.ann_dir)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(img_dir) for f in fs)
    k = bench.num_classes
    conf = np.zeros((k, k), np.int64)
    for path in files:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        h, w = bgr.shape[:2]
        s = min(SLIDE.scale[0] / max(h, w), SLIDE.scale[1] / min(h, w))
        rgb = cv2.resize(bgr, (int(w * s + 0.5), int(h * s + 0.5)), interpolation=cv2.INTER_LINEAR)[..., ::-1]
        (probs,) = slide_inference(model, [to_tensor(rgb)], cfg=SLIDE, out_sizes=[(h, w)])
        pred = probs.argmax(0).numpy()
        rel = os.path.relpath(path, img_dir)
        stem = rel.replace("_leftImg8bit.png", "").rsplit(".", 1)[0]
        suffix = {"coco_object": "_instanceTrainIds.png", "coco_stuff": "_labelTrainIds.png",
                  "cityscapes": "_gtFine_labelTrainIds.png"}.get(name, ".png")
        gt = np.asarray(Image.open(os.path.join(ann_dir, stem + suffix))).astype(np.int64)
        if name in REDUCE_ZERO:
            gt = np.where(gt == 0, 255, gt - 1)
            gt[gt == 254] = 255
        valid = gt != 255
        np.add.at(conf, (gt[valid], pred[valid]), 1)
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmean(inter / union) * 100)


@pytest.fixture(scope="module")
def model(tiny_clip_file, tiny_heads_file):
    name, path = tiny_clip_file
    return build_model({"name": "clip_dinoiser", "clip": {"name": name, "pretrained": path},
                        "checkpoint": tiny_heads_file, "proj_dim": 16})


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_each_benchmark_loads_and_matches_independent_miou(model, data_dir, name):
    bench = BENCHMARKS[name]
    root = os.path.join(data_dir, bench.root)
    model.set_vocabulary(["unrelated", "classes"])
    decoding = model.decoding
    result = evaluate_benchmark(model, bench, root, slide=SLIDE, num_workers=0, progress=False)
    assert result.num_images == 3 and len(result.class_iou) == bench.num_classes
    # evaluation leaves the caller's model as it was
    assert model.class_names == ["unrelated", "classes"] and model.decoding is decoding
    model.set_vocabulary(read_vocabulary_file(bench.vocabulary_file))
    model.decoding = replace(model.decoding, bg_refine=bench.bg_refine)
    assert result.miou == pytest.approx(independent_miou(model, root, name), abs=1e-9)
    assert result.windows > 3


BENCHMARK_K = sorted({b.num_classes for b in BENCHMARKS.values()})


def all_pairs(k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(pred, label, expected K x K confusion counts): every (label, prediction) pair present,
    pair (l, p) ``1 + (7l + 3p) % 4`` times, plus ignored pixels predicted as any class (the last
    one included), shuffled into one H x W image."""
    ls, ps = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    counts = 1 + (7 * ls + 3 * ps) % 4
    label = np.repeat(ls.ravel(), counts.ravel())
    pred = np.repeat(ps.ravel(), counts.ravel())
    rng = np.random.default_rng(seed)
    n_ignored = 2 * k + 1
    label = np.concatenate([label, np.full(n_ignored, 255)])
    pred = np.concatenate([pred, rng.integers(0, k, n_ignored - 1), [k - 1]])
    order = rng.permutation(label.size)
    shape = (label.size // 7 + 1, 7)
    pad = shape[0] * shape[1] - label.size  # more ignored pixels fill the rectangle
    label = np.concatenate([label[order], np.full(pad, 255)]).reshape(shape)
    pred = np.concatenate([pred[order], np.full(pad, k - 1)]).reshape(shape)
    return torch.from_numpy(pred), torch.from_numpy(label).to(torch.uint8), counts


def test_benchmark_class_counts_are_the_ones_counted_below():
    assert BENCHMARK_K == [19, 20, 21, 59, 60, 81, 150, 171]


@pytest.mark.parametrize("k", BENCHMARK_K)
def test_confusion_counts_are_exact_for_every_pair_and_the_last_class(k):
    pred, label, counts = all_pairs(k)
    conf = confusion_matrix(confusion_index(pred, label, k), k)
    np.testing.assert_array_equal(conf.numpy(), counts)


@pytest.mark.parametrize("k", BENCHMARK_K)
def test_area_stats_equal_mmseg_intersect_and_union(k):
    from mmseg.evaluation import IoUMetric

    pred, label, counts = all_pairs(k, seed=k)
    ours = area_stats(pred, label, k)
    theirs = torch.stack(IoUMetric.intersect_and_union(pred, label.long(), k, 255))
    assert ours.dtype == torch.int64
    torch.testing.assert_close(ours, theirs.long(), rtol=0, atol=0)
    assert ours[0, k - 1] == counts[k - 1, k - 1]  # the last class's intersection
    miou, _ = metrics_from_stats(ours, [str(i) for i in range(k)])
    inter = np.diag(counts)
    assert miou == pytest.approx(np.mean(inter / (counts.sum(0) + counts.sum(1) - inter)) * 100, abs=1e-12)


def test_last_class_predicted_everywhere_gets_its_iou():
    """The case that the float histogram got wrong: K = 81, the last class predicted everywhere."""
    k = 81
    label = torch.full((40, 50), k - 1, dtype=torch.uint8)
    label[:, :24] = k - 2
    pred = torch.full((40, 50), k - 1)
    inter, union, _, _ = area_stats(pred, label, k)[:, k - 1]
    assert (inter.item(), union.item()) == (40 * 26, 40 * 50)


def test_reduce_zero_label_and_ignore_follow_mmseg(data_dir):
    root = os.path.join(data_dir, BENCHMARKS["voc20"].root)
    raw = np.asarray(Image.open(os.path.join(root, "SegmentationClass", "2007_000000.png")))
    sample = build_dataset(BENCHMARKS["voc20"], root)[0]
    expected = raw.astype(np.int64) - 1
    expected[raw == 0] = 255
    expected[raw == 255] = 255
    assert np.array_equal(sample["gt"], expected)
    voc = build_dataset(BENCHMARKS["voc"], root)[0]
    assert np.array_equal(voc["gt"], raw) and voc["img"].shape[0] == 448


@pytest.mark.parametrize("reduce_zero_label", [False, True])
def test_label_loading_equals_mmseg_load_annotations(tmp_path, reduce_zero_label):
    """Our label reader in the pipeline (``LoadLabels``) against mmseg's own ``LoadAnnotations``:
    ``reduce_zero_label`` and a ``label_map`` (what mmseg sets for a subset of a dataset's classes),
    on an 8-bit map with every value, the ignored 255 included, and on a 1 x N map."""
    from mmseg.datasets.transforms import LoadAnnotations

    from clip_dinoiser.data.benchmarks import LoadLabels

    rng = np.random.default_rng(3)
    for name, gt in (("square.png", rng.integers(0, 5, (9, 11))), ("thin.png", rng.integers(0, 5, (1, 13)))):
        gt = gt.astype(np.uint8)
        gt[0, 0] = 255
        Image.fromarray(gt).save(tmp_path / name)
        results = {"seg_map_path": str(tmp_path / name), "reduce_zero_label": reduce_zero_label,
                   "label_map": {1: 3, 3: 1, 4: 0}}
        ours = LoadLabels()(dict(results))["gt_seg_map"]
        theirs = LoadAnnotations(reduce_zero_label=None)({**results, "seg_fields": []})["gt_seg_map"]
        assert np.array_equal(ours, theirs.reshape(ours.shape)), name  # mmseg squeezes a 1 x N map to N


def test_dataset_errors_name_the_path(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="dataset folder not found: .*nowhere"):
        build_dataset(BENCHMARKS["ade20k"], str(tmp_path / "nowhere"))
    ade = make_benchmark(str(tmp_path), "ade20k", n=1)
    for f in os.listdir(os.path.join(ade, "images/validation")):  # ADE20KDataset lists '*.jpg' only
        os.rename(os.path.join(ade, "images/validation", f), os.path.join(ade, "images/validation", f + ".png"))
    with pytest.raises(FileNotFoundError, match=r"no '\*.jpg' images found under .*images/validation"):
        build_dataset(BENCHMARKS["ade20k"], ade)
    root = make_benchmark(str(tmp_path), "voc", n=2)
    os.remove(os.path.join(root, "ImageSets/Segmentation/val.txt"))
    with pytest.raises(FileNotFoundError, match="split file not found: .*val.txt"):
        build_dataset(BENCHMARKS["voc"], root)
    root = make_benchmark(str(tmp_path), "cityscapes", n=1)
    ann = os.path.join(root, "gtFine/val/frankfurt/2007_000000_gtFine_labelTrainIds.png")
    Image.fromarray(np.full((60, 80), 40, np.uint8)).save(ann)
    with pytest.raises(ValueError, match=r"2007_000000_gtFine_labelTrainIds.png has labels \[40\]"):
        evaluate_benchmark(model, BENCHMARKS["cityscapes"], root, slide=SLIDE, num_workers=0, progress=False)


def test_loader_processes_serve_every_benchmark_and_survive_an_error(tmp_path, model, data_dir):
    """Worker processes start once per process and are reused across benchmarks and calls (their items
    carry the dataset), also after a call that stopped on an error; results equal in-process loading."""
    from clip_dinoiser.engine.evaluation.evaluate import Evaluator

    evaluator = Evaluator(slide=SLIDE, num_workers=2, progress=False).start()

    def run(name, root, workers):
        if workers == 0:
            return evaluate_benchmark(model, BENCHMARKS[name], root, slide=SLIDE, num_workers=0, progress=False)
        return evaluator.evaluate(model, BENCHMARKS[name], root)

    voc_root = os.path.join(data_dir, BENCHMARKS["voc"].root)
    ade_root = os.path.join(data_dir, BENCHMARKS["ade20k"].root)
    expected = {name: run(name, root, 0).miou for name, root in (("voc", voc_root), ("ade20k", ade_root))}
    assert run("voc", voc_root, 2).miou == pytest.approx(expected["voc"], abs=1e-9)
    loader = evaluator._loader
    workers = list(loader._iterator._workers)
    bad_root = make_benchmark(str(tmp_path), "cityscapes", n=3)
    ann = os.path.join(bad_root, "gtFine/val/frankfurt/2008_000001_gtFine_labelTrainIds.png")
    Image.fromarray(np.full(Image.open(ann).size[::-1], 77, np.uint8)).save(ann)
    with pytest.raises(ValueError, match=r"2008_000001_gtFine_labelTrainIds.png has labels \[77\]"):
        run("cityscapes", bad_root, 2)
    assert run("ade20k", ade_root, 2).miou == pytest.approx(expected["ade20k"], abs=1e-9)
    assert run("voc", voc_root, 2).miou == pytest.approx(expected["voc"], abs=1e-9)
    assert evaluator._loader is loader  # the same worker processes throughout
    assert list(loader._iterator._workers) == workers
    evaluator.close()  # stops them
    assert not any(w.is_alive() for w in workers)


LOADER_AFTER_CV2_POOL = """
import sys, cv2, numpy as np
cv2.setNumThreads(4)
for _ in range(3):  # OpenCV's thread pool is now running in this (the parent) process
    cv2.resize(np.zeros((1500, 1500, 3), np.uint8), (1200, 1000))
from clip_dinoiser.data.benchmarks import BENCHMARKS, build_dataset
from clip_dinoiser.engine.evaluation.evaluate import Evaluator, loader_items
bench = BENCHMARKS["voc"]
dataset = build_dataset(bench, sys.argv[1])
items = loader_items(bench, dataset, (256, 64), range(len(dataset)))
with Evaluator(num_workers=2, loader_batch=2) as evaluator:
    print(sum(len(b["shapes"]) // 2 for b in evaluator.batches(items)), len(dataset), cv2.getNumThreads())
"""


def test_loader_processes_start_after_the_parent_used_opencv_threads(data_dir):
    """Regression: cv2.setNumThreads in a forked loader process hung when the parent had used
    OpenCV's thread pool (e.g. an in-process evaluation before one with workers)."""
    root = os.path.join(data_dir, BENCHMARKS["voc"].root)
    r = subprocess.run([sys.executable, "-c", LOADER_AFTER_CV2_POOL, root], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    loaded, total, threads = map(int, r.stdout.split())
    assert loaded == total > 0 and threads == 4  # every image; the parent's OpenCV threads restored


def test_bad_label_values():
    from clip_dinoiser.data.benchmarks import bad_label_values

    gt = np.array([[0, 3, 255], [21, 20, 200]], np.uint8)
    assert bad_label_values(gt, 21) == [21, 200]
    assert bad_label_values(gt, 256) == []
    assert bad_label_values(gt.astype(np.int16) - 1, 21) == [-1, 199, 254]
    assert bad_label_values(np.zeros((2, 2), np.uint8), 1) == []


def _eval_cmd(tmp_path, data_dir, clip_file, heads, out, *extra):
    return [f"data.root={data_dir}", "device=cpu", "num_workers=0", "progress=false", f"output={out}",
            f"model.clip.name={tmp_path / 'tiny-ViT-test.json'}", f"model.clip.pretrained={clip_file}",
            f"model.checkpoint={heads}", "model.proj_dim=16", "slide.scale=[256,64]", "slide.crop=[64,64]",
            "slide.stride=[32,32]", *extra]


@pytest.mark.slow
def test_eval_cli_all_benchmarks_and_torchrun_two_processes_agree(tmp_path, data_dir, tiny_clip_file,
                                                                  tiny_heads_file):
    from .conftest import TINY_CLIP_CFG

    (tmp_path / "tiny-ViT-test.json").write_text(json.dumps(TINY_CLIP_CFG))
    names = "data.names=[voc,context,coco_object,voc20,context59,coco_stuff,cityscapes,ade20k]"
    one = _eval_cmd(tmp_path, data_dir, tiny_clip_file[1], tiny_heads_file, tmp_path / "one", "data=all", names)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools/eval.py"), *one], capture_output=True, text=True,
                       cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Object" in r.stdout and "Avg" in r.stdout  # the summary table
    single = json.loads((tmp_path / "one" / "results.json").read_text())
    assert set(single) == set(PAPER_ORDER) | {"average_mIoU"}
    assert (tmp_path / "one" / "results.csv").read_text().count("\n") == 9
    assert (tmp_path / "one" / "config.yaml").exists()

    two = _eval_cmd(tmp_path, data_dir, tiny_clip_file[1], tiny_heads_file, tmp_path / "two", "data=all", names)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                        os.path.join(ROOT, "tools/eval.py"), *two], capture_output=True, text=True, cwd=tmp_path,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    double = json.loads((tmp_path / "two" / "results.json").read_text())
    for name in PAPER_ORDER:
        assert double[name]["mIoU"] == pytest.approx(single[name]["mIoU"], abs=1e-9), name
        assert double[name]["images"] == single[name]["images"]


def test_eval_cli_missing_dataset_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools/eval.py"), "data=ade20k",
                        f"data.root={tmp_path}/missing", f"output={tmp_path}/o"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: ade20k: dataset folder not found: {tmp_path}/missing"


def test_eval_cli_checks_its_output_folder_before_loading(tmp_path, data_dir):
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")  # would fail if a model were built
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools/eval.py"), "data=voc",
                        f"data.root={os.path.join(data_dir, BENCHMARKS['voc'].root)}", "output=taken",
                        "model.clip.pretrained=garbage.pt"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: output=taken: {tmp_path / 'taken'} exists and is not a folder"


def test_converters_map_labels(tmp_path):
    raw = np.array([[0, 10, 12, 89], [91, 92, 181, 255]], np.uint8)
    src = tmp_path / "000000000139.png"
    Image.fromarray(raw).save(src)
    apply_lut(str(src), str(tmp_path / "stuff.png"), COCO_STUFF_LUT)
    apply_lut(str(src), str(tmp_path / "object.png"), COCO_OBJECT_LUT)
    assert np.asarray(Image.open(tmp_path / "stuff.png")).tolist() == [[0, 10, 11, 79], [80, 81, 170, 255]]
    assert np.asarray(Image.open(tmp_path / "object.png")).tolist() == [[1, 11, 12, 80], [0, 0, 0, 0]]
    city = np.array([[7, 8, 26, 33], [0, 6, 34, 255]], np.uint8)
    Image.fromarray(city).save(tmp_path / "city.png")
    apply_lut(str(tmp_path / "city.png"), str(tmp_path / "city_train.png"), CITYSCAPES_LUT)
    assert np.asarray(Image.open(tmp_path / "city_train.png")).tolist() == [[0, 1, 13, 18], [255, 255, 255, 255]]


def test_converter_tools_walk_the_real_layout(tmp_path):
    ann = tmp_path / "coco_stuff164k" / "annotations" / "val2017"
    ann.mkdir(parents=True)
    Image.fromarray(np.array([[0, 91]], np.uint8)).save(ann / "000000000139.png")
    for tool, out in [("convert_coco_stuff.py", "000000000139_labelTrainIds.png"),
                      ("convert_coco_object.py", "000000000139_instanceTrainIds.png")]:
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), str(tmp_path / "coco_stuff164k"),
                            "--nproc", "1"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert (ann / out).exists()
    assert np.asarray(Image.open(ann / "000000000139_instanceTrainIds.png")).tolist() == [[1, 0]]
    gt = tmp_path / "cityscapes" / "gtFine" / "val" / "lindau"
    gt.mkdir(parents=True)
    Image.fromarray(np.array([[7, 24]], np.uint8)).save(gt / "lindau_000000_000019_gtFine_labelIds.png")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_cityscapes.py"),
                        str(tmp_path / "cityscapes"), "--nproc", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = np.asarray(Image.open(gt / "lindau_000000_000019_gtFine_labelTrainIds.png"))
    assert out.tolist() == [[0, 11]]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_cityscapes.py"), str(tmp_path / "no")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: Cityscapes folder not found")


@pytest.mark.slow  # tool processes, ~15-25 s: the default run's budget (README: Test)
def test_benchmark_tool_eval_smoke(tmp_path):
    """tools/benchmark.py runs end to end (tiny CLIP, CPU, one repeat) and reports every figure."""
    from .conftest import TINY_CLIP_CFG

    cfg = tmp_path / "tiny-ViT-bench.json"
    cfg.write_text(json.dumps(TINY_CLIP_CFG))
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools/benchmark.py"), "eval", "--device", "cpu",
                        "--clip", str(cfg), "--images", "3", "--window-batch", "4", "--repeat", "1",
                        "--workers", "1", "--json", str(out)], capture_output=True, text=True, cwd=tmp_path,
                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads(out.read_text())["eval"]
    for precision in ("fp32", "bf16"):
        for key in ("backbone_windows_per_s", "pipeline_windows_per_s", "resident_images_windows_per_s"):
            assert figures[f"{key}_{precision}"] > 0, key
        # 3 images of 500 x 375 / 375 x 500 -> 448 x 597: 2 windows each
        assert figures[f"pipeline_windows_per_s_{precision}"] == pytest.approx(
            2 * figures[f"pipeline_images_per_s_{precision}"])
    assert figures["loader_only_images_per_s"] > 0
