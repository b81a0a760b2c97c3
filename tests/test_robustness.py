"""Nothing lost, nothing silently wrong: bad inputs give one line naming the problem (before any
model is built where possible), runs are never overwritten or mixed, resume is exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from clip_dinoiser.data.benchmarks import BENCHMARKS
from clip_dinoiser.engine.evaluation.evaluate import evaluate_benchmark
from clip_dinoiser.engine.evaluation.inference import SlideConfig
from clip_dinoiser.engine.job.signals import Interrupted
from clip_dinoiser.engine.training.train import train
from clip_dinoiser.models import build_model, load_heads_state

from .conftest import TINY_CLIP_CFG, random_image, write_images
from .synthetic_data import make_benchmark
from .test_train import train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLIDE = SlideConfig(scale=(256, 64), crop=(64, 64), stride=(32, 32), window_batch=8)
SMALL_SLIDE = ["slide.scale=[256,64]", "slide.crop=[64,64]", "slide.stride=[32,32]", "slide.window_batch=8"]


def tool(name: str, *args: str, cwd, timeout: int = 300, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, **popen)


def one_line_error(r: subprocess.CompletedProcess, message: str) -> None:
    err = r.stderr.strip()
    assert r.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert err.splitlines()[-1].startswith("error: ") and message in err.splitlines()[-1], err[-3000:]


@pytest.fixture()
def tiny(tmp_path, tiny_clip_file, tiny_heads_file) -> list[str]:
    """Model overrides for the tools: the tiny CLIP from its JSON config and weights, tiny heads."""
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CLIP_CFG))
    return [f"model.clip.name={tmp_path / 'tiny.json'}", f"model.clip.pretrained={tiny_clip_file[1]}",
            f"model.checkpoint={tiny_heads_file}", "model.proj_dim=16", "device=cpu"]


@pytest.fixture()
def model(tiny_clip_file, tiny_heads_file):
    name, path = tiny_clip_file
    return build_model({"name": "clip_dinoiser", "clip": {"name": name, "pretrained": path},
                        "checkpoint": tiny_heads_file, "proj_dim": 16})


# ---------------------------------------------------------------- evaluation inputs


@pytest.mark.parametrize("shape", [(1, 80), (30, 40)])
def test_label_of_another_size_than_its_image_is_named(tmp_path, model, shape):
    """1 x 80 would broadcast against a 60 x 80 prediction and be scored silently."""
    root = make_benchmark(str(tmp_path), "voc", n=2)
    ann = os.path.join(root, "SegmentationClass", "2007_000000.png")
    Image.fromarray(np.zeros(shape, np.uint8)).save(ann)
    size = f"{shape[1]}x{shape[0]}"
    with pytest.raises(ValueError, match=rf"annotation .*2007_000000.png is {size} but its image "
                                         r".*2007_000000.jpg is 80x60"):
        evaluate_benchmark(model, BENCHMARKS["voc"], root, slide=SLIDE, num_workers=0, progress=False)


@pytest.mark.slow  # tool processes, ~15-25 s: the default run's budget (README: Test)
def test_corrupt_image_and_missing_label_are_one_line_through_the_loader_processes(tmp_path, tiny):
    root = make_benchmark(str(tmp_path / "data"), "voc", n=3)
    with open(os.path.join(root, "JPEGImages", "2008_000001.jpg"), "r+b") as f:
        f.truncate(40)  # a truncated JPEG: cv2 returns None, mmcv asserts
    r = tool("eval.py", "data=voc", f"data.root={root}", "output=out", "num_workers=1", *SMALL_SLIDE, *tiny,
             cwd=tmp_path)
    one_line_error(r, "cannot read image")
    assert "2008_000001.jpg" in r.stderr.splitlines()[-1]
    assert not os.path.exists(tmp_path / "out")  # a failed evaluation leaves no run folder
    make_benchmark(str(tmp_path / "data"), "voc", n=3)
    os.remove(os.path.join(root, "SegmentationClass", "2009_000002.png"))
    r = tool("eval.py", "data=voc", f"data.root={root}", "output=out", "num_workers=1", *SMALL_SLIDE, *tiny,
             cwd=tmp_path)
    one_line_error(r, "annotation not found")
    assert "2009_000002.png" in r.stderr.splitlines()[-1]  # the worker's message keeps the path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["slide.stride=[0,0]"], "slide.stride[0]=0: must be an integer >= 1"),
        (["slide.window_batch=0"], "slide.window_batch=0: must be an integer >= 1"),
        (["device=tpu"], "device=tpu: unknown device"),
        (["precision=fp8"], "precision=fp8: unknown precision"),
        (["limit=0"], "limit=0: must be an integer >= 1"),
        (["model.gamma=abc"], "model.gamma: Value 'abc' of type 'str' could not be converted to Float"),
        (["empty_split"], "voc: no images found"),
    ],
)
def test_eval_settings_fail_before_any_model_is_built(tmp_path, overrides, message):
    root = make_benchmark(str(tmp_path / "data"), "voc", n=1)
    if overrides == ["empty_split"]:
        open(os.path.join(root, "ImageSets/Segmentation/val.txt"), "w").close()
        overrides = []
    (tmp_path / "garbage.pt").write_bytes(b"not weights")  # any model build would fail differently
    r = tool("eval.py", "data=voc", f"data.root={root}", "output=out", "model.clip.pretrained=garbage.pt",
             "model.checkpoint=garbage.pt", *overrides, cwd=tmp_path)
    one_line_error(r, message)
    assert sorted(os.listdir(tmp_path)) == ["data", "garbage.pt"]


@pytest.mark.slow
def test_eval_keeps_earlier_results_and_writes_valid_json(tmp_path, tiny):
    root = make_benchmark(str(tmp_path / "data"), "coco_stuff", n=1)  # most of the 171 classes absent: NaN IoU
    args = ["data=coco_stuff", f"data.root={root}", "output=out", "num_workers=0", *SMALL_SLIDE, *tiny]
    first = tool("eval.py", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    text = (tmp_path / "out" / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in results.json"))
    assert results["coco_stuff"]["class_IoU"]["person"] is None or results["coco_stuff"]["class_IoU"]["person"] >= 0
    assert any(v is None for v in results["coco_stuff"]["class_IoU"].values())
    again = tool("eval.py", *args, cwd=tmp_path)
    one_line_error(again, "output=out: this run would replace out/config.yaml, out/results.json")
    assert (tmp_path / "out" / "results.json").read_text() == text
    replaced = tool("eval.py", *args, "overwrite=true", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr[-2000:]


# ---------------------------------------------------------------- demo inputs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["image=ok.png", "prompts_file=many.txt"], "300 classes: the label map (an indexed PNG) holds at most 256"),
        (["image=folder", "prompts=[cat]"], "no images (.jpg, .jpeg, .png, .bmp, .webp, .tif, .tiff) in image=folder"),
        (["image=ok.png", "prompts=[cat]", "query=[40,3]"], "query=[40,3] is outside the 32x32 image"),
        (["image=ok.png", "prompts=[cat]", "model.gamma=abc"],
         "model.gamma: Value 'abc' of type 'str' could not be converted to Float"),
        (["image=ok.png", "prompts=[cat]", "slide.window_batch=0"], "slide.window_batch=0: must be an integer >= 1"),
    ],
)
def test_demo_settings_fail_before_any_model_is_built(tmp_path, overrides, message):
    Image.fromarray(random_image(32, 32)).save(tmp_path / "ok.png")
    (tmp_path / "folder").mkdir()
    (tmp_path / "many.txt").write_text("\n".join(f"class {i}" for i in range(300)))
    (tmp_path / "garbage.pt").write_bytes(b"not weights")
    r = tool("demo.py", *overrides, "model.clip.pretrained=garbage.pt", "model.checkpoint=garbage.pt", "output=out",
             cwd=tmp_path)
    one_line_error(r, message)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- training runs


@pytest.fixture()
def train_args(tmp_path, tiny_clip_file, tiny_teachers) -> list[str]:
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CLIP_CFG))
    write_images(str(tmp_path / "imgs"), 4)
    t = tiny_teachers
    return [f"train.data={tmp_path / 'imgs'}", f"model.clip.name={tmp_path / 'tiny.json'}",
            f"model.clip.pretrained={tiny_clip_file[1]}", "model.proj_dim=16", "device=cpu", "train.im_size=64",
            "train.batch_size=2", "train.epochs=3", "train.num_workers=0", "train.save_every=2",
            f"teachers.dino.pretrained={t['dino']['pretrained']}",
            f"teachers.found.pretrained={t['found']['pretrained']}",
            f"teachers.found.decoder={t['found']['decoder']}",
            *[f"+teachers.{k}.kwargs.{n}={v}" for k in ("dino", "found") for n, v in t[k]["kwargs"].items()]]


@pytest.mark.slow
def test_resume_takes_the_runs_settings_and_refuses_changes(tmp_path, train_args):
    run = str(tmp_path / "run")
    first = tool("train.py", *train_args, f"train.output={run}", "train.stop_after=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    saved = (tmp_path / "run" / "config.yaml").read_text()
    changed = tool("train.py", f"train.resume={run}", "train.batch_size=1", "train.seed=3", cwd=tmp_path)
    one_line_error(changed, f"resuming {run} would change train.batch_size (2 -> 1), train.seed (0 -> 3)")
    alone = tool("train.py", f"train.resume={run}", cwd=tmp_path)  # the README's command
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert (tmp_path / "run" / "config.yaml").read_text() == saved
    assert os.path.isfile(tmp_path / "run" / "last.pt")
    log = (tmp_path / "run" / "train.log").read_text()
    assert "resuming" in log and f"train.resume={run}" in log
    assert "given anew" not in log  # the resume itself is no change of the run
    longer = tool("train.py", f"train.resume={run}", "train.epochs=4", cwd=tmp_path)  # extending is allowed, logged
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert "train.epochs: 3 -> 4" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.slow
def test_new_run_into_an_existing_run_is_refused_unless_overwrite(tmp_path, train_args):
    run = str(tmp_path / "run")
    assert tool("train.py", *train_args, f"train.output={run}", cwd=tmp_path).returncode == 0
    before = load_heads_state(os.path.join(run, "last.pt"))
    again = tool("train.py", *train_args, f"train.output={run}", "train.seed=5", cwd=tmp_path)
    one_line_error(again, f"train.output={run}: this run would replace {run}/config.yaml")
    after = load_heads_state(os.path.join(run, "last.pt"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    replaced = tool("train.py", *train_args, f"train.output={run}", "train.seed=5", "overwrite=true",
                    "train.stop_after=2", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert os.listdir(os.path.join(run, "checkpoints")) == ["iter_0000002.pt"] and not os.path.exists(
        os.path.join(run, "last.pt"))


def test_truncated_newest_checkpoint_falls_back_and_ctrl_c_saves_exactly(tmp_path, tiny_clip_file, tiny_teachers,
                                                                          monkeypatch, caplog):
    write_images(str(tmp_path / "imgs"), 6)
    full = train(train_config(tmp_path, tiny_clip_file, tiny_teachers, output=str(tmp_path / "full")),
                 torch.device("cpu"))

    # Ctrl-C during iteration 5: the loop finishes it, saves iteration 5 and stops.
    from clip_dinoiser.engine.training import train as train_module

    calls = {"n": 0}
    losses = train_module.Distiller.losses

    def interrupted_losses(self, images, heads=None):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return losses(self, images, heads)

    monkeypatch.setattr(train_module.Distiller, "losses", interrupted_losses)
    cut = train_config(tmp_path, tiny_clip_file, tiny_teachers, output=str(tmp_path / "cut"), keep_checkpoints=5)
    with pytest.raises(Interrupted) as stopped:
        train(cut, torch.device("cpu"))
    assert stopped.value.iteration == 5
    assert sorted(os.listdir(tmp_path / "cut" / "checkpoints")) == ["iter_0000002.pt", "iter_0000004.pt",
                                                                     "iter_0000005.pt"]
    monkeypatch.setattr(train_module.Distiller, "losses", losses)

    # The newest checkpoint is truncated (a kill during a copy, a full disk): resume uses iteration 4.
    newest = tmp_path / "cut" / "checkpoints" / "iter_0000005.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    cut["train"]["resume"] = str(tmp_path / "cut")
    with caplog.at_level("WARNING"):
        resumed = train(cut, torch.device("cpu"))
    assert "iter_0000005.pt is unreadable" in caplog.text
    a, b = load_heads_state(full), load_heads_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)  # equal to the uninterrupted run


@pytest.mark.slow
def test_ctrl_c_in_the_training_tool_saves_and_says_how_to_resume(tmp_path, train_args):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "train.py"), *train_args,
                             f"train.output={run}", "train.epochs=2000", "train.save_every=100000",
                             "train.num_workers=1"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run / "checkpoints").is_dir() and time.time() < deadline:  # made just before the first iteration
        time.sleep(0.2)
    time.sleep(2)  # a few iterations
    proc.send_signal(signal.SIGINT)  # to the main process; its loader process ignores SIGINT
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted (SIGINT): iteration ") and f"train.resume={run}" in last
    iteration = int(last.split("iteration ")[1].split(" ")[0])
    assert os.listdir(run / "checkpoints") == [f"iter_{iteration:07d}.pt"]
    log = (run / "train.log").read_text()
    assert last in log and f"iteration {iteration}/" in log  # the resume command and the last loss line too


def test_unreadable_training_images_are_named_or_skipped_and_replaced(tmp_path, tiny_clip_file, tiny_teachers, caplog):
    from clip_dinoiser.engine.training.train import training_images

    folder = write_images(str(tmp_path / "imgs"), 6, nested=False)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not a jpeg")
    tcfg = {"data": folder, "ds_size": 7, "seed": 0}
    with pytest.raises(ValueError, match=r"cannot read training image .*broken.jpg"):
        training_images(tcfg)
    with caplog.at_level("WARNING"):
        chosen = training_images({**tcfg, "skip_bad_images": True, "ds_size": 10})
    assert len(chosen) == 6 and not any(f.endswith("broken.jpg") for f in chosen)
    assert "train.ds_size=10 but" in caplog.text and "skipped 1 unreadable" in caplog.text
    replaced = training_images({**tcfg, "skip_bad_images": True, "ds_size": 6})
    assert len(replaced) == 6 and not any(f.endswith("broken.jpg") for f in replaced)  # the sample keeps its size
    os.remove(tmp_path / "imgs" / "broken.jpg")
    from clip_dinoiser.data.train_images import list_images, sample_subset

    for size in (3, 6, None):  # without bad files: exactly the seeded draw
        assert training_images({**tcfg, "ds_size": size}) == sample_subset(list_images(folder), size, 0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.batch_size=abc"], "train.batch_size: Value 'abc' of type 'str' could not be converted to Integer"),
        (["train.epochs=0"], "train.epochs=0: must be an integer >= 1"),
        (["device=tpu"], "device=tpu: unknown device"),
        (["precision=fp8"], "precision=fp8: unknown precision"),
        (["model.gamma=abc"], "model.gamma: Value 'abc' of type 'str' could not be converted to Float"),
    ],
)
def test_train_settings_fail_before_any_model_is_built(tmp_path, overrides, message):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "decoder.pt").write_bytes(b"x")
    r = tool("train.py", "train.data=imgs", "train.output=run", "teachers.found.decoder=decoder.pt", *overrides,
             cwd=tmp_path, timeout=120)
    one_line_error(r, message)
    assert not (tmp_path / "run").exists()


def test_heads_and_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    """A write that fails half-way (Ctrl-C, kill, full disk) leaves the earlier file intact and no partial file."""
    from clip_dinoiser.models import DINOiserHeads, save_heads

    heads = DINOiserHeads(in_dim=8, proj_dim=4, kernel_size=3)
    path = str(tmp_path / "last.pt")
    save_heads(heads, path)
    before = open(path, "rb").read()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_heads(DINOiserHeads(in_dim=8, proj_dim=4, kernel_size=3), path)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["last.pt"]


def test_an_image_path_that_is_a_folder_says_so(tmp_path):
    from clip_dinoiser.data.images import load_image

    with pytest.raises(IsADirectoryError, match=f"image {tmp_path} is a folder, not an image file"):
        load_image(str(tmp_path))
