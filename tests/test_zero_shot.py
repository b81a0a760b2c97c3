"""MaskCLIP+'s zero-shot (transductive) setting: the seen classes from the labels, the unseen
pixels from the annotator restricted to the unseen classes and then from the target itself; an
unseen class's label value never reaches the loss; mIoU seen / unseen and hIoU against numpy."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clip_dinoiser.data.seg_train import IGNORE, UNSEEN, SeenLabels, TargetTrainImages, augment_for, get_train_split
from clip_dinoiser.errors import ConfigError

from .conftest import TINY_CLIP_CFG, random_image
from .test_maskclip_plus import ROOT, TINY_TARGET


def write_voc(root: str, labels: list[np.ndarray], split: str = "train") -> list[str]:
    """VOC 2012 in mmseg's layout: images, raw labels (0 background, 1..20, 255) and a split file."""
    ids = [f"2008_{i:06d}" for i in range(len(labels))]
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i, (image_id, label) in enumerate(zip(ids, labels)):
        Image.fromarray(random_image(*label.shape, seed=i)).save(os.path.join(root, "JPEGImages", f"{image_id}.jpg"))
        Image.fromarray(label).save(os.path.join(root, "SegmentationClass", f"{image_id}.png"))
    with open(os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return ids


def raw_labels(n: int, seed: int = 0, size=(60, 80)) -> list[np.ndarray]:
    """Blocky VOC labels with every class present somewhere and a 255 border."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 21, (4, 4)).astype(np.uint8)
        label = np.kron(small, np.ones((size[0] // 4, size[1] // 4), np.uint8))
        label[:2] = 255
        out.append(label)
    return out


# --------------------------------------------------------------------------- the labels of a step


class FixedAnnotator(nn.Module):
    """Returns given probabilities (over the unseen classes), whatever the images."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.probs = probs

    def forward(self, images):
        return self.probs


def task_for(unseen, probs, *, self_train_from=None, iteration=0):
    from clip_dinoiser.config import TargetTrainSettings, plain
    from clip_dinoiser.engine.training.target_train import TargetTraining

    settings = plain(TargetTrainSettings(benchmark="voc20", self_train_from=self_train_from, output="unused"))
    task = TargetTraining(nn.Conv2d(3, 3, 1), FixedAnnotator(probs), settings, [], [f"c{i}" for i in range(6)],
                          unseen=tuple(unseen))
    task.iteration = iteration
    return task


def test_zero_shot_labels_of_a_crop_equal_an_independent_computation():
    """Seen pixels keep the ground truth; unseen pixels get the unseen class whose annotator
    probability, resized bilinearly to the crop, is highest; 255 and padding stay ignored. From
    ``self_train_from`` the unseen pixels get the target's own argmax among the unseen classes."""
    torch.manual_seed(0)
    unseen = [4, 1]
    gt = torch.tensor(np.random.default_rng(0).choice([0, 2, 3, 5, UNSEEN, IGNORE], (2, 24, 32)), dtype=torch.uint8)
    valid = torch.ones(2, 24, 32, dtype=torch.bool)
    valid[1, 20:] = False
    gt[1, 20:] = IGNORE  # the pad's label
    probs = torch.rand(2, len(unseen), 6, 8).softmax(1)
    task = task_for(unseen, probs)
    logits = torch.randn(2, 6, 24, 32)
    labels, source = task.labels(torch.rand(2, 3, 24, 32), valid, logits, gt)
    assert source == "annotator"
    up = F.interpolate(probs, size=(24, 32), mode="bilinear", align_corners=False).numpy()
    g = gt.numpy().astype(np.int64)
    expected = np.where(g == UNSEEN, np.array(unseen)[up.argmax(1)], g)
    expected[~valid.numpy()] = IGNORE
    assert np.array_equal(labels.numpy(), expected)
    assert set(np.unique(labels.numpy())[np.unique(labels.numpy()) != IGNORE]) <= {0, 1, 2, 3, 4, 5}

    task = task_for(unseen, probs, self_train_from=5, iteration=4)  # 1-based iteration 5: the target's own
    labels, source = task.labels(torch.rand(2, 3, 24, 32), valid, logits, gt)
    assert source == "self"
    own = np.array(unseen)[logits[:, unseen].numpy().argmax(1)]
    expected = np.where(g == UNSEEN, own, g)
    expected[~valid.numpy()] = IGNORE
    assert np.array_equal(labels.numpy(), expected)


def test_self_training_starts_at_maskclips_iteration():
    """MaskCLIP+'s head counts forward passes from 1 (``_iter_counter``, reset then incremented
    before the check) and self-trains where ``counter >= start_self_train[0]``; clip-guided
    labels end at ``start_clip_guided[1] = start - 1``. Iteration i (1-based) is self-trained iff
    i >= train.self_train_from."""
    gt = torch.full((1, 4, 4), UNSEEN, dtype=torch.uint8)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    sources = []
    for done in range(0, 6):  # TargetTraining.iteration: iterations finished before this step
        task = task_for([0, 1], torch.rand(1, 2, 4, 4), self_train_from=4, iteration=done)
        sources.append(task.labels(torch.rand(1, 3, 4, 4), valid, torch.randn(1, 6, 4, 4), gt)[1])
    assert sources == ["annotator"] * 3 + ["self"] * 3  # 1-based iterations 1, 2, 3 | 4, 5, 6


# --------------------------------------------------------------------------- no unseen value in the loss


def test_the_reader_suppresses_unseen_classes_before_anything_else(tmp_path):
    """MaskCLIP's ``LoadAnnotations(suppress_labels=...)``: after reduce_zero_label, every
    unseen class's pixel is ``UNSEEN``; seen classes and 255 stay; other values are errors."""
    raw = np.array([[0, 1, 5, 16, 20, 255]], np.uint8)
    Image.fromarray(raw).save(tmp_path / "a.png")
    read = SeenLabels(unseen=(15, 16, 17, 18, 19), num_classes=20, reduce_zero_label=True).read(str(tmp_path / "a.png"))
    assert read.tolist() == [[255, 0, 4, UNSEEN, UNSEEN, 255]]  # voc20: 16 -> 15 and 20 -> 19 are unseen
    Image.fromarray(np.array([[3, 40]], np.uint8)).save(tmp_path / "b.png")
    from clip_dinoiser.errors import UserError

    with pytest.raises(UserError, match=r"b\.png has labels \[39\]"):
        SeenLabels(unseen=(1,), num_classes=20, reduce_zero_label=True).read(str(tmp_path / "b.png"))


def zero_shot_cfg(tmp_path, tiny_clip_file, root, output, **train):
    name, path = tiny_clip_file
    settings = {"benchmark": "voc20", "data": root, "output": str(tmp_path / output), "batch_size": 2,
                "iterations": 3, "num_workers": 0, "crop": [40, 40], "scale": [80, 60], "self_train_from": 3,
                "unseen": "maskclip", "vocabulary_set": "maskclip", **train}
    return {"annotator": {"name": "maskclip", "bg_refine": False, "clip": {"name": name, "pretrained": path},
                          "text_cache": None},
            "target": dict(TINY_TARGET), "train": settings, "precision": "fp32"}


def test_an_unseen_label_value_never_reaches_the_loss(tmp_path, tiny_clip_file, monkeypatch):
    """Two copies of a benchmark whose label files differ only in WHICH unseen class covers the
    unseen pixels (voc20's 15..19 permuted) give the same loader items and the same labels in the
    loss at every iteration, CLIP-guided and self-trained: the unseen classes' ground truth is
    never used. The items themselves never hold an unseen class's value."""
    from clip_dinoiser.engine.training import target_train

    labels = raw_labels(4)
    shift = np.arange(256, dtype=np.uint8)
    shift[[16, 17, 18, 19, 20]] = [20, 16, 17, 18, 19]  # raw values of voc20's unseen classes 15..19, permuted
    permuted = [shift[lab] for lab in labels]
    assert any((a != b).any() for a, b in zip(labels, permuted))
    roots = [str(tmp_path / name / "VOCdevkit" / "VOC2012") for name in ("a", "b")]
    write_voc(roots[0], labels)
    write_voc(roots[1], permuted)

    seen = SeenLabels(tuple(range(15, 20)), 20, True)
    files = [[os.path.join(r, "JPEGImages", f"2008_{i:06d}.jpg") for i in range(4)] for r in roots]
    items = [TargetTrainImages(f, augment_for(get_train_split("voc20")), seen=seen,
                               labels=[p.replace("JPEGImages", "SegmentationClass").replace(".jpg", ".png") for p in f])
             for f in files]
    for index, seed in [(0, 11), (1, 12), (3, 13)]:
        a, b = items[0][(index, seed)], items[1][(index, seed)]
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert not set(np.unique(a[2].numpy())) & set(range(15, 20))

    captured: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    loss = target_train.segmentation_loss
    for name, root in zip("ab", roots):
        monkeypatch.setattr(target_train, "segmentation_loss",
                            lambda logits, lab, name=name: captured[name].append(lab.clone()) or loss(logits, lab))
        target_train.train(zero_shot_cfg(tmp_path, tiny_clip_file, root, f"run_{name}"), torch.device("cpu"))
    assert len(captured["a"]) == 3 and all(torch.equal(x, y) for x, y in zip(captured["a"], captured["b"]))
    assert any((lab >= 15) & (lab < 20) for lab in captured["a"][0].flatten().tolist())  # pseudo-labelled unseen
    last = torch.load(tmp_path / "run_a" / "last.pt", weights_only=False)
    assert last["unseen"] == {"benchmark": "voc20", "indices": [15, 16, 17, 18, 19],
                              "names": ["potted plant", "sheep", "sofa", "train", "tv monitor"]}


@pytest.mark.slow
def test_seen_unseen_and_hiou_equal_numpy_on_saved_predictions(tmp_path, tiny_clip_file):
    from clip_dinoiser.engine.training import target_train

    root = str(tmp_path / "data" / "VOCdevkit" / "VOC2012")
    write_voc(root, raw_labels(4, seed=1))
    write_voc(root, raw_labels(3, seed=2), split="val")  # scored on 3 images (overwrites 3 of the 4: fine)
    config = tmp_path / f"{tiny_clip_file[0]}.json"  # the tiny CLIP's config, for the tool in its own process
    config.write_text(json.dumps(TINY_CLIP_CFG))
    clip = (str(config), tiny_clip_file[1])
    last = target_train.train(zero_shot_cfg(tmp_path, clip, root, "run", iterations=2, self_train_from=2),
                              torch.device("cpu"))
    r = subprocess.run([sys.executable, f"{ROOT}/tools/eval.py", "model=target", f"model.checkpoint={last}",
                        f"model.clip.name={config}", f"model.clip.pretrained={tiny_clip_file[1]}",
                        "model.text_cache=null", "data=voc20", f"data.root={root}", "data.vocabulary_set=maskclip",
                        "slide.scale=[80,60]", "slide.crop=[40,40]", "slide.stride=[20,20]", "device=cpu",
                        "num_workers=0", "save_predictions=true", "output=ev"], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mIoU seen" in r.stdout + r.stderr and "hIoU" in r.stdout + r.stderr
    result = json.loads((tmp_path / "ev" / "results.json").read_text())["voc20"]
    conf = np.zeros((20, 20), np.int64)
    for image_id in [f"2008_{i:06d}" for i in range(3)]:
        raw = np.asarray(Image.open(os.path.join(root, "SegmentationClass", f"{image_id}.png"))).astype(np.int64)
        gt = np.where((raw == 0) | (raw == 255), 255, raw - 1)
        # saved in the label files' convention: + 1 where the dataset reduces label 0
        saved = Image.open(tmp_path / "ev" / "predictions" / "voc20" / f"{image_id}.png")
        pred = np.asarray(saved).astype(np.int64) - 1
        keep = gt != 255
        np.add.at(conf, (gt[keep], pred[keep]), 1)
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union * 100
    seen_iou, unseen_iou = np.nanmean(iou[:15]), np.nanmean(iou[15:])
    assert result["mIoU_seen"] == pytest.approx(seen_iou, abs=1e-9)
    assert result["mIoU_unseen"] == pytest.approx(unseen_iou, abs=1e-9)
    assert result["hIoU"] == pytest.approx(2 * seen_iou * unseen_iou / (seen_iou + unseen_iou), abs=1e-9)
    assert result["unseen_classes"] == ["potted plant", "sheep", "sofa", "train", "tv monitor"]
    csv_header = (tmp_path / "ev" / "results.csv").read_text().splitlines()[0]
    assert csv_header.endswith("mIoU_seen,mIoU_unseen,hIoU")


@pytest.mark.parametrize("unseen, message", [
    ("[]", r"train\.unseen=\[\]: distinct class indices"),
    ("[3,3]", r"train\.unseen=\[3, 3\]: distinct"),
    ("[2,25]", r"train\.unseen=\[2, 25\]: 25 is not a class index of voc20 \(0\.\.19\)"),
    ("[-1]", r"train\.unseen\[0\]=-1"),
    ("cats", r"train\.unseen=cats: a list of class indices"),
])
def test_bad_unseen_classes_are_one_line_errors_naming_the_key(unseen, message):
    from omegaconf import OmegaConf

    from clip_dinoiser.config import TargetTrainSettings, parse
    from clip_dinoiser.engine.training.target_train import unseen_classes

    value = OmegaConf.to_container(OmegaConf.create({"v": unseen}) if unseen == "cats" else
                                   OmegaConf.create(f"v: {unseen}"))["v"]
    def settings(benchmark, unseen):
        return parse(TargetTrainSettings, {"benchmark": benchmark, "unseen": unseen, "output": "o"}, "train")

    with pytest.raises(ConfigError, match=message):
        unseen_classes(settings("voc20", value), 20)
    with pytest.raises(ConfigError, match="train.benchmark=folder has none"):
        unseen_classes(settings("folder", [1]), 5)
    with pytest.raises(ConfigError, match="MaskCLIP has no zero-shot split of ade20k"):
        unseen_classes(settings("ade20k", "maskclip"), 150)


def test_self_training_beyond_the_run_is_refused_before_any_model(tmp_path, tiny_clip_file):
    from clip_dinoiser.engine.training.target_train import check_run_inputs

    root = str(tmp_path / "VOCdevkit" / "VOC2012")
    write_voc(root, raw_labels(2))
    cfg = zero_shot_cfg(tmp_path, tiny_clip_file, root, "run", iterations=3, self_train_from=4)
    with pytest.raises(ConfigError, match=r"train\.self_train_from=4 is beyond the run's 3 iterations"):
        check_run_inputs(cfg)
    os.remove(os.path.join(root, "SegmentationClass", "2008_000001.png"))
    expected = os.path.join(root, "SegmentationClassAug", "2008_000001.png")  # the first label folder's path
    with pytest.raises(FileNotFoundError, match=r"voc20: 1 of 2 training images have no label in "
                       rf"SegmentationClassAug or SegmentationClass .*, e\.g\. {re.escape(expected)}$"):
        check_run_inputs({**cfg, "train": {**cfg["train"], "self_train_from": 2}})


def test_a_training_image_that_is_no_image_is_refused_before_any_model(tmp_path, tiny_clip_file):
    """``check_run_inputs`` reads every training image's header (``train_images.check_images``, as
    the heads' training does), not when the loader reaches it. Planted bug caught: MaskCLIP+
    without that check (a non-image fails mid-training)."""
    from clip_dinoiser.engine.training.target_train import check_run_inputs
    from clip_dinoiser.errors import UserError

    root = str(tmp_path / "VOCdevkit" / "VOC2012")
    ids = write_voc(root, raw_labels(2))
    bad = os.path.join(root, "JPEGImages", f"{ids[1]}.jpg")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    cfg = zero_shot_cfg(tmp_path, tiny_clip_file, root, "run", iterations=3, self_train_from=2)
    with pytest.raises(UserError, match=f"{bad}.*a training image: remove it, or replace it"):
        check_run_inputs(cfg)


# --------------------------------------------------------------------------- what a step logs


def test_label_statistics_of_a_step_equal_numpy():
    """The curves' pseudo-label statistics: the ignored fraction of all pixels, each class's share of
    the labelled ones, and 1 when the target labelled itself."""
    from clip_dinoiser.engine.training.target_train import label_statistics

    labels = torch.tensor(np.random.default_rng(3).choice([0, 1, 1, 3, IGNORE], (2, 5, 7)))
    names = ["sky", "cat", "dog", "road"]
    a = labels.numpy()
    labelled = a[a != IGNORE]
    for source, flag in (("annotator", 0.0), ("self", 1.0)):
        stats = label_statistics(labels, names, source)
        assert stats["pseudo/ignored"].item() == pytest.approx((a == IGNORE).mean())
        assert stats["pseudo/self_trained"].item() == flag
        for i, name in enumerate(names):
            assert stats[f"classes/{name}"].item() == pytest.approx((labelled == i).mean()), name
    assert stats["classes/dog"].item() == 0.0


# --------------------------------------------------------------------------- data and classes of a run


def test_the_runs_images_and_classes_default_root_folder_and_class_limit(tmp_path, monkeypatch):
    """``train.data`` null: the benchmark's mmseg folder under data/; ``train.benchmark=folder``: any
    image folder with a class-name file, both needed; at most 253 classes (254 and 255 are the
    unseen and ignored labels)."""
    from clip_dinoiser.config import TargetTrainSettings, parse
    from clip_dinoiser.data import benchmarks
    from clip_dinoiser.engine.training.target_train import split_and_vocabulary

    def settings(**values):
        return parse(TargetTrainSettings, {"output": "o", **values}, "train")

    monkeypatch.setattr(benchmarks, "DATA_ROOT", str(tmp_path / "data"))
    voc = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    write_voc(str(voc), raw_labels(2))
    root, files, vocabulary = split_and_vocabulary(settings(benchmark="voc20"))
    assert root == str(voc) and len(files) == 2 and len(vocabulary) == 20

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(random_image(8, 8)).save(folder / "a.png")
    for n, ok in ((253, True), (254, False)):
        (tmp_path / f"{n}.txt").write_text("".join(f"class{i}\n" for i in range(n)))
        cfg = settings(benchmark="folder", data=str(folder), vocabulary=str(tmp_path / f"{n}.txt"))
        if ok:
            assert split_and_vocabulary(cfg)[0] == str(folder) and len(split_and_vocabulary(cfg)[2]) == n
        else:
            with pytest.raises(ConfigError, match="254 classes: at most 253"):
                split_and_vocabulary(cfg)
    for missing in ({"data": str(folder)}, {"vocabulary": str(tmp_path / "253.txt")}):
        with pytest.raises(ConfigError, match="train.benchmark=folder needs"):
            split_and_vocabulary(settings(benchmark="folder", **missing))


# --------------------------------------------------------------------------- the numbers an evaluation reports


def test_zero_shot_metrics_of_a_result_equal_numpy():
    """mIoU over the seen classes and over the unseen ones (mmseg's nanmean: a class with no pixel
    and no prediction has no IoU), and their harmonic mean (ZS3Net's hIoU; 0 where both are 0,
    none where either has no class with an IoU); throughput; none of these without unseen classes."""
    from clip_dinoiser.engine.evaluation.evaluate import BenchmarkResult

    nan = float("nan")
    iou = {"a": 60.0, "b": 20.0, "c": nan, "d": 30.0, "e": 5.0}
    r = BenchmarkResult("voc20", 1.0, iou, 10, 4.0, 3, unseen=("b", "d"))
    seen, unseen = np.nanmean([60.0, nan, 5.0]), np.mean([20.0, 30.0])
    assert r.miou_seen == pytest.approx(seen) and r.miou_unseen == pytest.approx(unseen)
    assert r.hiou == pytest.approx(2 * seen * unseen / (seen + unseen))
    assert r.images_per_s == pytest.approx(2.5)
    assert BenchmarkResult("x", 1.0, {"a": 40.0, "b": 40.0}, 1, 1.0, 1, unseen=("b",)).hiou == pytest.approx(40.0)
    assert BenchmarkResult("x", 1.0, {"a": 0.0, "b": 0.0}, 1, 1.0, 1, unseen=("b",)).hiou == 0.0
    for iou in ({"a": nan, "b": 30.0}, {"a": 30.0, "b": nan}):  # no seen / no unseen class with an IoU
        assert BenchmarkResult("x", 1.0, iou, 1, 1.0, 1, unseen=("b",)).hiou is None
    plain = BenchmarkResult("x", 1.0, iou, 1, 1.0, 1)
    assert (plain.miou_seen, plain.miou_unseen, plain.hiou) == (None, None, None)


def test_a_zero_shot_models_unseen_classes_among_the_scored_names():
    """By index on the benchmark the model was trained on (whatever the names there), by name
    (any case) elsewhere; none when a recorded name is missing or the model is not zero-shot."""
    from dataclasses import replace

    from clip_dinoiser.data.benchmarks import BENCHMARKS
    from clip_dinoiser.engine.evaluation.evaluate import unseen_of

    model = nn.Module()
    model.unseen = {"benchmark": "voc20", "indices": [15, 16, 17, 18, 19],
                    "names": ["potted plant", "sheep", "sofa", "train", "tv monitor"]}
    ours = [f"class{i}" for i in range(20)]  # the names the benchmark is scored with
    voc20 = BENCHMARKS["voc20"]
    assert unseen_of(model, voc20, ours) == tuple(ours[15:])
    other = replace(voc20, name="voc20_copy")  # another 20-class benchmark: by name
    names = [*ours[:3], "Sheep", "sofa", "tv monitor", "train", "potted plant", *ours[8:]]
    assert unseen_of(model, other, names) == ("Sheep", "sofa", "tv monitor", "train", "potted plant")
    assert unseen_of(model, other, ours) == ()
    model.unseen = None
    assert unseen_of(model, voc20, ours) == ()


def test_results_files_and_table_of_a_zero_shot_evaluation(tmp_path):
    """results.json, results.csv and the printed table of two benchmarks (one scored by a zero-shot
    model), against values written out by hand: the averages, the seen / unseen / hIoU rows."""
    from dataclasses import replace

    from clip_dinoiser.data.benchmarks import BENCHMARKS
    from clip_dinoiser.engine.evaluation.evaluate import BenchmarkResult
    from clip_dinoiser.engine.evaluation.results import summary_table, write_results
    from clip_dinoiser.engine.job.runs import RunFolder

    nan = float("nan")
    voc = (replace(BENCHMARKS["voc20"], paper_miou=87.8),
           BenchmarkResult("voc20", 40.0, {"a": 60.0, "b": 20.0, "c": nan, "d": 30.0}, 4, 2.0, 8, unseen=("b", "d")))
    ctx = (replace(BENCHMARKS["context59"], paper_miou=None),
           BenchmarkResult("context59", 20.0, {"a": 20.0}, 2, 4.0, 2))
    hiou = 2 * 60.0 * 25.0 / 85.0
    assert summary_table([voc]).splitlines() == [
        "          VOC20",
        "mIoU       40.0",
        "paper      87.8",
        "seen       60.0",
        "unseen     25.0",
        "hIoU       35.3"]
    assert summary_table([voc, ctx]).splitlines() == [
        "              VOC20  Context59        Avg",
        "mIoU           40.0       20.0       30.0",
        "paper          87.8          -          -",
        "seen           60.0          -          -",
        "unseen         25.0          -          -",
        "hIoU           35.3          -          -"]
    assert summary_table([ctx]).splitlines() == ["          Context59", "mIoU           20.0", "paper             -"]
    ctx_paper = (replace(ctx[0], paper_miou=40.0), ctx[1])  # the paper's average where every benchmark has one
    assert summary_table([voc, ctx_paper]).splitlines()[2] == "paper          87.8       40.0       63.9"

    (tmp_path / "ev").mkdir()
    run = RunFolder(str(tmp_path / "ev"), ["results.json", "results.csv", "config.yaml"], key="output")
    write_results([voc, ctx], {"model": {"name": "target"}}, run)
    assert "name: target" in (tmp_path / "ev" / "config.yaml").read_text()
    result = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert result["average_mIoU"] == 30.0
    assert result["voc20"] == {"mIoU": 40.0, "paper_mIoU": 87.8, "images": 4, "windows": 8, "seconds": 2.0,
                               "images_per_s": 2.0, "mIoU_seen": 60.0, "mIoU_unseen": 25.0,
                               "hIoU": pytest.approx(hiou), "unseen_classes": ["b", "d"],
                               "class_IoU": {"a": 60.0, "b": 20.0, "c": None, "d": 30.0}}
    assert result["context59"] == {"mIoU": 20.0, "paper_mIoU": None, "images": 2, "windows": 2, "seconds": 4.0,
                                   "images_per_s": 0.5, "class_IoU": {"a": 20.0}}
    assert (tmp_path / "ev" / "results.csv").read_text().splitlines() == [
        "benchmark,mIoU,paper_mIoU,images,images_per_s,mIoU_seen,mIoU_unseen,hIoU",
        "voc20,40.00,87.8,4,2.00,60.00,25.00,35.29",
        "context59,20.00,,2,0.50,,,"]
    (tmp_path / "one").mkdir()
    one = RunFolder(str(tmp_path / "one"), ["results.json", "results.csv", "config.yaml"], key="output")
    write_results([ctx], None, one)
    assert not (tmp_path / "one" / "config.yaml").exists()
    assert "average_mIoU" not in json.loads((tmp_path / "one" / "results.json").read_text())


def test_summary_of_zero_shot_runs_adds_their_three_columns():
    """``tools/summary.py``: a zero-shot evaluation's results.json keys become columns of their own
    beside the benchmark's mIoU, each run's own numbers."""
    from clip_dinoiser.engine.reporting.summary import Run, tables

    runs = [Run(f"runs/{name}", "eval", {"model.checkpoint": name},
                {"voc20": {"mIoU": miou, "paper_mIoU": 87.8, "mIoU_seen": seen, "mIoU_unseen": unseen, "hIoU": h}})
            for name, miou, seen, unseen, h in (("a", 50.0, 60.0, 30.0, 40.0), ("b", 55.0, 58.0, 40.0, 47.3))]
    (table,) = tables(runs)
    assert table.columns == ["run", "model.checkpoint", "voc20", "average", "voc20 seen", "voc20 unseen", "voc20 hIoU"]
    assert [[row.get(c) for c in table.columns[2:]] for row in table.rows] == [
        [50.0, 50.0, 60.0, 30.0, 40.0], [55.0, 55.0, 58.0, 40.0, 47.3], [87.8, 87.8, None, None, None]]
