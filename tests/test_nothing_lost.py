"""Nothing silently wrong, nothing lost (round two), one test per class of fault, through the tools:
the one guarded writer (a concurrent second writer, reruns, sweeps, the demo), numbers checked at
the boundary (NaN from the command line), every exit saving (a real SIGTERM), one reader per file
kind (16-bit labels, decompression bombs, link loops, garbage weights, broken files), every tool's
one-line errors, and thin images scored."""

from __future__ import annotations

import hashlib
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

from .conftest import random_image, write_images
from .synthetic_data import make_benchmark
from .test_robustness import ROOT, SMALL_SLIDE, one_line_error, tiny, tool, train_args  # noqa: F401 (fixtures)


def snapshot(folder) -> dict[str, str]:
    """Every file below ``folder`` with the hash of its bytes."""
    out = {}
    for d, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(d, f)
            out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def popen(name: str, *args: str, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", name), *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# ---------------------------------------------------------------- 1. one guarded writer


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path, tiny, train_args):  # noqa: F811
    """Two real processes into one new folder: the second is refused in one line while the first
    works (the first is then stopped with Ctrl-C: it writes nothing, and nothing was mixed)."""
    root = make_benchmark(str(tmp_path / "data"), "voc", n=12)
    slow = ["slide.window_batch=1", "slide.stride=[8,8]", "slide.crop=[64,64]", "slide.scale=[512,128]"]
    args = ["data=voc", f"data.root={root}", "output=out", "num_workers=0", *slow, *tiny]
    first = popen("eval.py", *args, cwd=tmp_path)
    wait_for(tmp_path / "out" / ".in_use", first)  # the first evaluation has claimed the folder
    second = tool("eval.py", *args, cwd=tmp_path)
    assert first.poll() is None, "the first evaluation ended before the second one was refused"
    one_line_error(second, "out is being written by process")
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert not os.path.exists(tmp_path / "out")  # interrupted: no results, no folder

    trainer = popen("train.py", *train_args, "train.output=run", "train.epochs=2000", cwd=tmp_path)
    wait_for(tmp_path / "run" / ".in_use", trainer)
    rival = tool("train.py", *train_args, "train.output=run", "overwrite=true", cwd=tmp_path)
    assert trainer.poll() is None, "the first training ended before the second one was refused"
    one_line_error(rival, "run is being written by process")  # even overwrite=true waits for no one
    trainer.send_signal(signal.SIGINT)
    _, err = trainer.communicate(timeout=300)
    assert trainer.returncode == 130, err[-2000:]
    saved = yaml_settings(tmp_path / "run" / "config.yaml")
    assert saved["train"]["epochs"] == 2000 and not saved.get("overwrite")  # the first run's, untouched


def yaml_settings(path) -> dict:
    import yaml

    return yaml.safe_load(open(path).read())


@pytest.mark.slow
def test_reruns_never_replace_earlier_results(tmp_path, tiny, clip_json_demo):  # noqa: F811
    root = make_benchmark(str(tmp_path / "data"), "voc", n=2)
    sweep = ["data=voc", f"data.root={root}", "output=sw", "num_workers=0", "sweep={model.gamma:[0.1,0.3]}",
             *SMALL_SLIDE, *tiny]
    assert tool("eval.py", *sweep, cwd=tmp_path).returncode == 0
    before = snapshot(tmp_path / "sw")
    one_line_error(tool("eval.py", *sweep, cwd=tmp_path), "this run would replace")  # each setting's folder
    one_line_error(tool("eval.py", *sweep[:4], "sweep={model.gamma:[0.1,0.10]}", *sweep[5:], cwd=tmp_path),
                   "sweep model.gamma: the value 0.1 is given twice")
    assert snapshot(tmp_path / "sw") == before
    (tmp_path / "only_config").mkdir()
    (tmp_path / "only_config" / "config.yaml").write_text("model: {gamma: 0.4}\n")
    one_line_error(tool("eval.py", *sweep[:2], "output=only_config", *sweep[3:4], *sweep[5:], cwd=tmp_path),
                   "only_config/config.yaml")
    assert (tmp_path / "only_config" / "config.yaml").read_text() == "model: {gamma: 0.4}\n"

    demo = ["image=photo.png", "prompts=[cat,dog]", "output=demo", "figure=false", *clip_json_demo]
    Image.fromarray(random_image(40, 50)).save(tmp_path / "photo.png")
    assert tool("demo.py", *demo, cwd=tmp_path).returncode == 0
    before = snapshot(tmp_path / "demo")
    one_line_error(tool("demo.py", *demo, cwd=tmp_path), "the demo would replace demo/photo_mask.png")
    assert snapshot(tmp_path / "demo") == before
    assert tool("demo.py", *demo, "overwrite=true", cwd=tmp_path).returncode == 0


@pytest.fixture()
def clip_json_demo(tiny) -> list[str]:  # noqa: F811
    return [*tiny, *SMALL_SLIDE]


# ---------------------------------------------------------------- 2. numbers at the boundary


@pytest.mark.parametrize(("tool_name", "overrides", "message"), [
    ("eval.py", ["model.gamma=nan"], "model.gamma=nan: must be a finite number in [0, 1]"),
    ("eval.py", ["model.delta=-5"], "model.delta=-5.0: must be a finite number in [0, 1]"),
    ("demo.py", ["image=x.png", "prompts=[a]", "model.maskclip.temperature=0"],
     "model.maskclip.temperature=0.0: must be a finite number > 0"),
    ("train.py", ["train.data=imgs", "train.corr_lr=nan"], "train.corr_lr=nan: must be a finite number > 0"),
    ("train.py", ["train.data=imgs", "train.found_lr=inf"], "train.found_lr=inf: must be a finite number > 0"),
    ("train_target.py", ["train.conf_thresh=1.5"], "train.conf_thresh=1.5: must be a finite number in [0, 1]"),
])
def test_non_finite_and_out_of_range_numbers_are_refused_before_anything_runs(tmp_path, tool_name, overrides,
                                                                                message):
    r = tool(tool_name, *overrides, cwd=tmp_path, timeout=120)
    one_line_error(r, message)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- 3. every exit saves


@pytest.mark.slow
def test_sigterm_saves_training_and_stops_evaluation_cleanly(tmp_path, tiny, train_args):  # noqa: F811
    run = tmp_path / "run"
    trainer = popen("train.py", *train_args, f"train.output={run}", "train.epochs=2000", "train.save_every=100000",
                    cwd=tmp_path)
    wait_for(run / "metrics.jsonl", trainer)  # iterations are running
    trainer.send_signal(signal.SIGTERM)  # what a cluster scheduler sends before it kills a job
    _, err = trainer.communicate(timeout=240)
    assert trainer.returncode == 143, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted (SIGTERM): iteration ") and f"train.resume={run}" in last
    iteration = int(last.split("iteration ")[1].split(" ")[0])
    assert os.listdir(run / "checkpoints") == [f"iter_{iteration:07d}.pt"]
    one_line_error(tool("train.py", f"train.resume={run}", "train.epochs=1", cwd=tmp_path),
                   "a run cannot be shortened")

    root = make_benchmark(str(tmp_path / "data"), "voc", n=3)
    evaluation = popen("eval.py", "data=voc", f"data.root={root}", "output=ev", "num_workers=1", "limit=3",
                       *SMALL_SLIDE, *tiny, cwd=tmp_path)
    wait_for(tmp_path / "ev" / ".in_use", evaluation)
    evaluation.send_signal(signal.SIGTERM)
    _, err = evaluation.communicate(timeout=240)
    assert evaluation.returncode == 143 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted (SIGTERM): stopped, no results written"
    assert not os.path.exists(tmp_path / "ev")  # no partial results, no empty folder


# ---------------------------------------------------------------- 4. one reader per file kind


def test_a_16_bit_label_above_255_is_named_not_wrapped(tmp_path, tiny):  # noqa: F811
    root = make_benchmark(str(tmp_path / "data"), "voc", n=2)
    label = os.path.join(root, "SegmentationClass", "2007_000000.png")
    values = np.asarray(Image.open(label)).astype(np.uint16)
    values[5, 5] = 257  # 8 bits would read it as class 1
    Image.fromarray(values).save(label)
    assert Image.open(label).mode.startswith("I")
    r = tool("eval.py", "data=voc", f"data.root={root}", "output=out", "num_workers=0", *SMALL_SLIDE, *tiny,
             cwd=tmp_path)
    one_line_error(r, "2007_000000.png holds the value 257")
    assert not os.path.exists(tmp_path / "out")


def test_decompression_bombs_are_named_or_skipped_and_counted(tmp_path, tiny):  # noqa: F811
    os.makedirs(tmp_path / "photos")
    for i in range(2):
        Image.fromarray(random_image(20, 30, seed=i)).save(tmp_path / "photos" / f"small_{i}.png")
    Image.fromarray(random_image(80, 90, seed=9)).save(tmp_path / "photos" / "bomb.png")  # 7,200 pixels
    env = {**os.environ, "CLIP_DINOISER_MAX_IMAGE_PIXELS": "1000"}  # Pillow refuses above 2x the limit
    one = tool("demo.py", "image=photos/bomb.png", "prompts=[a,b]", "output=one", *tiny, *SMALL_SLIDE, cwd=tmp_path,
               env=env)
    one_line_error(one, "bomb.png: Image size (7200 pixels) exceeds limit")
    folder = tool("demo.py", "image=photos", "prompts=[a,b]", "output=many", "figure=false", *tiny, *SMALL_SLIDE,
                  cwd=tmp_path, env=env)
    assert folder.returncode == 0 and "Traceback" not in folder.stderr, folder.stderr[-2000:]
    assert "skipped 1 unreadable: photos/bomb.png" in folder.stdout  # the log (stdout) names and counts it
    assert sorted(os.listdir(tmp_path / "many")) == [f"small_{i}_{k}.png" for i in range(2) for k in ("labels", "mask")]


def test_a_link_loop_does_not_multiply_the_training_images(tmp_path):
    from clip_dinoiser.data.train_images import list_images

    write_images(str(tmp_path / "imgs"), 4)
    os.symlink(tmp_path / "imgs", tmp_path / "imgs" / "n00000000" / "loop")  # imgs/n0/loop -> imgs
    files = list_images(str(tmp_path / "imgs"))
    assert len(files) == 4 and len({os.path.realpath(f) for f in files}) == 4


@pytest.mark.parametrize(("tool_name", "make", "args", "message"), [
    ("demo.py", lambda d: (d / "clip.pt").write_bytes(b"\x80\x02garbage bytes"),
     ["image=x.png", "prompts=[a]", "model=maskclip", "model.clip.pretrained=clip.pt"],
     "cannot read CLIP checkpoint clip.pt"),
    ("demo.py", lambda d: (d / "p.txt").write_bytes("caf\xe9\n".encode("latin-1")),
     ["image=x.png", "prompts_file=p.txt"], "p.txt (prompts_file) is not UTF-8 text"),
    ("train.py", lambda d: [os.makedirs(d / "run" / "checkpoints"), (d / "run" / "config.yaml").write_text(""),
                            (d / "run" / "checkpoints" / "iter_0000002.pt").write_bytes(b"x")],
     ["train.resume=run"], "run/config.yaml is empty or not a mapping of settings"),
    ("summarize.py", lambda d: [os.makedirs(d / "runs" / "a"), (d / "runs" / "a" / "results.json").write_text("{")],
     ["runs"], "results file runs/a/results.json is not valid JSON"),
    ("benchmark.py", lambda d: None, ["eval", "--repeat", "0"], "--repeat=0: must be an integer >= 1"),
    ("benchmark.py", lambda d: None, ["eval", "--json", "missing/x.json"], "folder"),
    ("benchmark.py", lambda d: os.makedirs(d / "out"), ["eval", "--json", "out"], "--json out is a folder"),
    ("benchmark.py", lambda d: (d / "b.json").write_text("{}"), ["eval", "--json", "b.json"],
     "--json b.json exists: add --overwrite"),
])
def test_broken_files_and_arguments_are_one_line_in_every_tool(tmp_path, tool_name, make, args, message):
    Image.fromarray(random_image(20, 20)).save(tmp_path / "x.png")
    make(tmp_path)
    before = snapshot(tmp_path)
    one_line_error(tool(tool_name, *args, cwd=tmp_path, timeout=120), message)
    assert snapshot(tmp_path) == before


def test_teacher_weights_and_text_cache_entries_of_the_wrong_shape(tmp_path, tiny_clip_file, tiny_teachers, caplog):
    from clip_dinoiser.models import build_model
    from clip_dinoiser.teachers.vit import load_timm_vit

    with pytest.raises(ValueError, match=r"teacher weights .*found.pth \(teachers.dino.pretrained\) do not fit"):
        load_timm_vit(tiny_teachers["dino"]["arch"], tiny_teachers["found"]["pretrained"], "teachers.dino.pretrained",
                      **tiny_teachers["dino"]["kwargs"])
    name, path = tiny_clip_file
    cfg = {"name": "maskclip", "clip": {"name": name, "pretrained": path}, "text_cache": str(tmp_path / "cache")}
    model = build_model(cfg)
    model.set_vocabulary(["cat"])
    expected = model.text.current.embeddings.clone()
    entry = next((tmp_path / "cache" / "text").iterdir())
    torch.save({"embedding": torch.ones(7), "name": "cat"}, entry)  # another model's width
    with caplog.at_level("WARNING"):
        again = build_model(cfg)
        again.set_vocabulary(["cat"])
    assert "ignoring text-cache entry" in caplog.text and "the model's is (32,)" in caplog.text
    torch.testing.assert_close(again.text.current.embeddings, expected)


# ---------------------------------------------------------------- 6. thin images


def test_thin_images_and_labels_are_accepted_and_scored(tmp_path, tiny):  # noqa: F811
    root = make_benchmark(str(tmp_path / "data"), "voc", n=1)
    ids = []
    for i, (h, w) in enumerate([(1, 200), (200, 1), (1, 1)]):
        image_id = f"2010_{i:06d}"
        Image.fromarray(random_image(h, w, seed=i)).save(os.path.join(root, "JPEGImages", f"{image_id}.jpg"))
        Image.fromarray(np.full((h, w), (i * 7) % 21, np.uint8)).save(
            os.path.join(root, "SegmentationClass", f"{image_id}.png"))
        ids.append(image_id)
    with open(os.path.join(root, "ImageSets", "Segmentation", "val.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    r = tool("eval.py", "data=voc", f"data.root={root}", "output=out", "num_workers=0", "save_predictions=true",
             *SMALL_SLIDE, *tiny, cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    reported = json.loads((tmp_path / "out" / "results.json").read_text())["voc"]
    conf = np.zeros((21, 21), np.int64)
    for image_id in ids:
        gt = np.asarray(Image.open(os.path.join(root, "SegmentationClass", f"{image_id}.png"))).astype(int)
        pred = np.asarray(Image.open(tmp_path / "out" / "predictions" / "voc" / f"{image_id}.png")).astype(int)
        assert pred.shape == gt.shape
        np.add.at(conf, (gt.ravel(), pred.ravel()), 1)
    inter, union = np.diag(conf), conf.sum(0) + conf.sum(1) - np.diag(conf)
    with np.errstate(invalid="ignore", divide="ignore"):
        assert reported["mIoU"] == pytest.approx(float(np.nanmean(inter / union) * 100), abs=1e-9)
    assert reported["images"] == 3
