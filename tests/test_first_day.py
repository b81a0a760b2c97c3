"""A new user's first day (issue #30): weights in one place, messages that name the key the user
typed, hydra's slips answered with the right spelling, training that says how it goes, a Python
result that offers what the demo shows, pictures that read right, summaries without empty or
ambiguous charts, and CPU-only machines."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import clip_dinoiser

from .conftest import TINY_CLIP_CFG, TINY_DINO, TINY_FOUND, random_image, write_heads, write_images
from .test_maskclip_plus import TINY_TARGET
from .test_quickstart import free_port, fresh_checkout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLIDE = {"scale": [256, 64], "crop": [64, 64], "stride": [32, 32], "window_batch": 8}


def offline_env(tmp_path, **extra) -> dict[str, str]:
    """A machine without the hub or the releases' servers, with empty caches."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CLIP_DINOISER_"))}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "CLIP_DINOISER_RELEASES_URL": f"http://127.0.0.1:{free_port()}", "OMP_NUM_THREADS": "1", **extra}


def run_tool(name: str, *args: str, cwd, env=None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


# ---------------------------------------------------------------- 1. weights in one place


# The default weights as a new user's local copies, named as the README's offline paragraph says,
# holding tiny random models: a ``sitecustomize`` module in the tools' processes makes the default
# architectures tiny (an open_clip config for ViT-B-16, timm's sizes), as the Quickstart's test
# stands in for the hub. Nothing else about the weights is given to the tools.
SHIM = """
import open_clip, timm
open_clip.add_model_config({configs!r})
_create = timm.create_model
TINY = {tiny!r}
def create_model(name, *args, **kwargs):
    return _create(name, *args, **{{**TINY.get(name.split(".")[0], {{}}), **kwargs}})
timm.create_model = create_model
"""
TINY_TIMM = {"vit_base_patch16_224": TINY_DINO["kwargs"], "vit_small_patch8_224": TINY_FOUND["kwargs"],
             "resnet101c": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_TARGET["kwargs"].items()}}


@pytest.fixture(scope="module")
def user_weights(tmp_path_factory, tiny_clip_file):
    """(folder of the default weights' local copies, the shim folder for PYTHONPATH)."""
    import timm
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("first_day")
    folder, shim, configs = root / "weights", root / "shim", root / "configs"
    for d in (folder, shim, configs):
        d.mkdir()
    (configs / "ViT-B-16.json").write_text(json.dumps(TINY_CLIP_CFG))
    (shim / "sitecustomize.py").write_text(SHIM.format(configs=str(configs), tiny=TINY_TIMM))
    clip = torch.load(tiny_clip_file[1], weights_only=True)
    save_file({k: v.half().contiguous() for k, v in clip.items()},  # the hub's files are fp16
              str(folder / "ViT-B-16.laion2b_s34b_b88k.safetensors"))
    write_heads(folder, proj_dim=256, seed=3)  # last.pt: the released heads' name, the default proj_dim
    torch.manual_seed(4)
    for tag, arch in (("vit_base_patch16_224.dino", "vit_base_patch16_224"),
                      ("vit_small_patch8_224.dino", "vit_small_patch8_224"), ("resnet101c.gluon_in1k", "resnet101c")):
        model = timm.create_model(arch, pretrained=False, **TINY_TIMM[arch])
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / f"{tag}.safetensors"))
    torch.save({"decoder": {"weight": torch.randn(1, 24, 1, 1) * 0.3, "bias": torch.zeros(1)}},
               folder / "decoder_weights.pt")
    return folder, shim


def offline_paragraph() -> list[str]:
    """The bash lines of the README's offline paragraph (its block after "**Offline.**")."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = re.search(r"```bash\n(.*?)```", readme.split("**Offline.**", 1)[1], flags=re.S).group(1)
    return [ln for ln in block.splitlines() if ln.strip()]


def first_day_inputs(folder) -> dict[str, list[str]]:
    """A photo, a VOC folder, a training folder and a class list in ``folder``; each tool's
    command line as the README gives it, with this machine's inputs and run sizes (no weights)."""
    from .synthetic_data import make_benchmark

    Image.fromarray(random_image(60, 80)).save(os.path.join(folder, "photo.jpg"))
    make_benchmark(os.path.join(folder, "data"), "voc", n=2)
    write_images(os.path.join(folder, "imgs"), 4)
    with open(os.path.join(folder, "classes.txt"), "w") as f:
        f.write("cat\nsofa\nbackground\n")
    small = [f"slide.{k}={json.dumps(v).replace(' ', '')}" for k, v in SLIDE.items()]
    return {
        "demo.py": ["image=photo.jpg", "prompts=[cat,sofa,background]", "output=out/", *small],
        "eval.py": ["data=voc", "output=ev", "limit=2", *small],
        "train.py": ["train.data=imgs", "train.output=run", "train.im_size=64", "train.batch_size=2",
                     "train.epochs=1"],
        "train_target.py": ["train.benchmark=folder", "train.data=imgs", "train.vocabulary=classes.txt",
                            "train.output=target", "train.iterations=2", "train.batch_size=2", "train.crop=[48,48]",
                            "train.scale=[64,48]"],
    }


@pytest.mark.slow
def test_the_readme_offline_paragraph_serves_every_tool_in_one_attempt(tmp_path, user_weights):
    """The paragraph's lines, as written, in a fresh clone (``~/weights`` is the folder of local
    copies); then each tool, as the README runs it, reaches its result in one attempt offline."""
    folder, shim = user_weights
    checkout = fresh_checkout(tmp_path / "clip_dinoiser")
    home = tmp_path / "home"
    home.mkdir()
    os.symlink(folder, home / "weights")
    env = offline_env(tmp_path, HOME=str(home), PYTHONPATH=f"{shim}{os.pathsep}{checkout}")
    commands = first_day_inputs(checkout)
    script = "set -e\n" + "\n".join(offline_paragraph()) + "\n" + "\n".join(
        f"python tools/{tool} {shlex.join(args)}" for tool, args in commands.items()) + "\n"
    r = subprocess.run(["bash", "-c", script], cwd=checkout, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "MISSING" not in r.stdout and r.stdout.count("(local copy)") >= 10, r.stdout[-3000:]
    assert sorted(os.listdir(os.path.join(checkout, "out"))) == ["photo_figure.png", "photo_labels.png",
                                                                  "photo_mask.png"]
    assert os.path.isfile(os.path.join(checkout, "ev", "results.json"))
    for run in ("run", "target"):
        assert os.path.isfile(os.path.join(checkout, run, "last.pt")), run
    assert "is not the released CLIP-DINOiser heads" in r.stdout + r.stderr  # checkpoints' last.pt, said so


def test_every_missing_weights_file_is_named_in_one_line_before_anything_loads(tmp_path):
    """Offline with no local copy: one line names every file training needs, each with its key
    and the name of its local copy, and nothing was loaded (no stage line of a model).
    MaskCLIP+'s tool: ``test_train_target_names_the_annotators_keys``."""
    write_images(str(tmp_path / "imgs"), 2)
    r = run_tool("train.py", "train.data=imgs", cwd=tmp_path, env=offline_env(tmp_path))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "Traceback" not in r.stderr and last.startswith("error: cannot find 4 "), \
        r.stderr[-2000:]
    for key, copy in (("model.clip.pretrained=laion2b_s34b_b88k", "ViT-B-16.laion2b_s34b_b88k.safetensors"),
                      ("teachers.dino.pretrained=vit_base_patch16_224.dino", "vit_base_patch16_224.dino.safetensors"),
                      ("teachers.found.pretrained=vit_small_patch8_224.dino", "vit_small_patch8_224.dino.safetensors"),
                      ("teachers.found.decoder=released", "decoder_weights.pt")):
        assert f"{key} (" in last and f": {copy} from " in last, key
    assert "in checkpoints/ under those names" in last and "loading CLIP" not in r.stdout


def test_checkpoints_last_pt_is_the_released_heads_local_copy(tmp_path, monkeypatch, tiny_clip_file, caplog):
    """``model.checkpoint=released`` (the default) with ``checkpoints/last.pt`` in the working folder
    loads that file, offline, and says it is not the authors' file; CLIP_DINOISER_WEIGHTS moves the folder."""
    from clip_dinoiser.models import build_model, load_heads_state

    monkeypatch.setenv("CLIP_DINOISER_RELEASES_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("CLIP_DINOISER_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    heads = write_heads(tmp_path / "checkpoints", proj_dim=16, seed=5)
    cfg = {"name": "clip_dinoiser", "clip": {"name": tiny_clip_file[0], "pretrained": tiny_clip_file[1]},
           "proj_dim": 16}
    with caplog.at_level("INFO"):
        model = build_model(cfg)  # checkpoint: the default, 'released'
    assert torch.equal(model.heads.obj_proj.weight, load_heads_state(heads)["obj_proj.weight"])
    assert "checkpoints/last.pt is not the released CLIP-DINOiser heads" in caplog.text
    (tmp_path / "elsewhere").mkdir()
    moved = write_heads(tmp_path / "elsewhere", proj_dim=16, seed=6)
    monkeypatch.setenv("CLIP_DINOISER_WEIGHTS", str(tmp_path / "elsewhere"))
    assert torch.equal(build_model(cfg).heads.obj_proj.weight, load_heads_state(moved)["obj_proj.weight"])


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tools_weights_reports_each_file_and_downloads_the_missing_ones(tmp_path, monkeypatch, capsys,
                                                                        tiny_clip_file, tiny_teachers):
    """``tools/weights.py train --copy``: a file given by path, a local copy and a ``released`` file
    downloaded from its (mirror) server into the cache and put in the weights folder by name, each
    printed with its path; offline with nothing there, the one-line error of the tools, exit code 2."""
    import http.server
    import threading
    from types import MappingProxyType

    from clip_dinoiser import download

    body = open(tiny_teachers["found"]["decoder"], "rb").read()

    class Files(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    spec = download.RELEASED["found_decoder"]
    tiny = download.ReleasedFile(spec.filename, spec.url, download.git_blob_id(tiny_teachers["found"]["decoder"]),
                                 spec.published, spec.what)
    monkeypatch.setattr(download, "RELEASED", MappingProxyType({**download.RELEASED, "found_decoder": tiny}))
    monkeypatch.setenv("CLIP_DINOISER_RELEASES_URL", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("CLIP_DINOISER_WEIGHTS", str(tmp_path / "weights"))
    (tmp_path / "weights").mkdir()
    shutil.copy(tiny_teachers["dino"]["pretrained"], tmp_path / "weights" / "vit_base_patch16_224.dino.pth")
    weights = load_tool("weights")
    try:
        code = weights.main(["train", "--copy", f"model.clip.name={tiny_clip_file[0]}",
                             f"model.clip.pretrained={tiny_clip_file[1]}",
                             f"teachers.found.pretrained={tiny_teachers['found']['pretrained']}"])
    finally:
        httpd.shutdown()
    out = capsys.readouterr().out
    assert code == 0, out
    cached = os.path.join(os.environ["XDG_CACHE_HOME"], "clip_dinoiser", "weights", spec.filename)
    assert f"{tiny_clip_file[1]}  (the file given)" in out
    assert f"{tmp_path / 'weights' / 'vit_base_patch16_224.dino.pth'}  (local copy)" in out
    copy = tmp_path / "weights" / "decoder_weights.pt"
    assert f"teachers.found.decoder=released  (FOUND decoder)\n      {copy}  (local copy)" in out
    assert copy.read_bytes() == open(cached, "rb").read() == body
    os.remove(cached)
    os.remove(copy)
    monkeypatch.setenv("CLIP_DINOISER_RELEASES_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SystemExit) as stopped:
        weights.main(["demo", "--no-download", f"model.clip.pretrained={tiny_clip_file[1]}"])
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and err.startswith("error: cannot find 1 weights file (127.0.0.1 cannot be reached)")
    assert "model.checkpoint=released (CLIP-DINOiser heads: last.pt from http://127.0.0.1" in err


# ---------------------------------------------------------------- 2. messages name the key the user typed


def test_train_target_names_the_annotators_keys(tmp_path):
    """Its keys as typed (annotator.*, not model.*), every missing file in the one line."""
    write_images(str(tmp_path / "imgs"), 2)
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    r = run_tool("train_target.py", "train.benchmark=folder", "train.data=imgs", "train.vocabulary=classes.txt",
                 "annotator.clip.pretrained=gone/clip.pt", "annotator.checkpoint=gone/heads.pt", cwd=tmp_path,
                 env=offline_env(tmp_path))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "CLIP checkpoint not found: gone/clip.pt (annotator.clip.pretrained)" in last
    assert "heads checkpoint not found: gone/heads.pt (annotator.checkpoint;" in last
    assert "cannot find 1 weights file" in last and "target.pretrained=resnet101c.gluon_in1k" in last
    assert "model." not in last


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("CLIP_DINOISER_WEIGHTS", str(tmp_path / "no_weights"))


def test_offline_loaders_name_the_key_of_their_weights(offline_hub):
    """Past the tools' check (a library user calling the loaders), the timm teachers and the
    MaskCLIP+ backbone name the key their weights come from."""
    from clip_dinoiser.models.target import load_backbone
    from clip_dinoiser.teachers import build_teachers
    from clip_dinoiser.teachers.vit import load_timm_vit

    with pytest.raises(ValueError, match=r"cannot load teacher 'vit_small_patch8_224.dino'.*teachers\.found\.pre"):
        load_timm_vit("vit_small_patch8_224", "vit_small_patch8_224.dino", "teachers.found.pretrained")
    with pytest.raises(ValueError, match=r"cannot load target backbone 'resnet101c.gluon_in1k'.*target\.pretrained"):
        load_backbone("resnet101c", "resnet101c.gluon_in1k")
    with pytest.raises(ValueError, match=r"model\.teachers\.dino\.pretrained=vit_base_patch16_224\.dino"):
        build_teachers({"dino": {"type": "dino"}}, "model.teachers")


def test_the_python_api_names_its_own_arguments(tiny_clip_file):
    clip = {"name": tiny_clip_file[0], "pretrained": tiny_clip_file[1]}
    with pytest.raises(FileNotFoundError, match=r"heads checkpoint not found: missing\.pt \(weights;") as e:
        clip_dinoiser.load(weights="missing.pt", clip=clip, proj_dim=16, device="cpu")
    assert "model.checkpoint" not in str(e.value)
    with pytest.raises(ValueError, match=r"load\(checkpoint='heads\.pt'\): the model's weights file is given as "
                                         r"weights=, e\.g\. clip_dinoiser\.load\('clip_dinoiser', "
                                         r"weights='heads\.pt'\)"):
        clip_dinoiser.load(checkpoint="heads.pt", clip=clip, proj_dim=16, device="cpu")


# ---------------------------------------------------------------- 3. hydra's slips, the right spelling


@pytest.mark.parametrize(("tool", "argv", "line"), [
    ("demo", ["image=x.jpg", "prompts=cat,sofa"],
     "error: prompts=cat,sofa: several values are a list in brackets, quoted for the shell: 'prompts=[cat,sofa]'"),
    ("demo", ["photo.jpg", "prompts=[cat]"], "error: photo.jpg: settings are key=value; an image is given as "
                                             "image=photo.jpg"),
    ("eval", ["data=vocc"], "error: data=vocc: no such benchmark; "
                            "data=ade20k|all|cityscapes|coco_object|coco_stuff|context|context59|voc|voc20"),
    ("eval", ["slide.crop=448"], "error: slide.crop=448: slide.crop is a list: 'slide.crop=[448,448]'"),
    ("eval", ["model.gamma=0.1,0.2"], "error: model.gamma=0.1,0.2: comma-separated values are a sweep: add -m to "
                                      "run each one (python tools/eval.py -m model.gamma=0.1,0.2); one run takes one "
                                      "value"),
])
def test_common_slips_get_one_line_with_the_right_spelling(monkeypatch, capsys, tool, argv, line):
    """Through the tools' own ``launch``, before hydra composes anything (the tool never runs)."""
    from clip_dinoiser.config import DemoConfig, EvalConfig
    from clip_dinoiser.engine.job.cli import launch

    monkeypatch.setattr(sys, "argv", [os.path.join(ROOT, "tools", f"{tool}.py"), *argv])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # what launch sets, undone after the test
    schema, groups = ((DemoConfig, {"model": "clip_dinoiser"}) if tool == "demo" else
                      (EvalConfig, {"model": "clip_dinoiser", "data": "voc", "corruption": "clean"}))
    with pytest.raises(SystemExit) as stopped:
        launch(lambda: pytest.fail("the tool ran"), schema=schema, groups=groups)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == line


def test_a_group_option_in_a_sweep_lists_the_options(tmp_path):
    r = run_tool("eval.py", "-m", "data=voc,vocc", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "error: data=vocc: no such benchmark; data=ade20k|all|cityscapes|coco_object|coco_stuff|context|context59|"
        "voc|voc20"), r.stderr[-2000:]


# ---------------------------------------------------------------- 4. training says how it goes


def test_training_shows_its_losses_and_agreements_in_the_bar_and_the_log(tmp_path, tiny_clip_file, tiny_teachers,
                                                                         caplog, capsys):
    from clip_dinoiser.engine.training.train import train

    from .test_train import train_config

    write_images(str(tmp_path / "imgs"), 4)
    cfg = train_config(tmp_path, tiny_clip_file, tiny_teachers, ds_size=None, epochs=2)
    cfg["train"]["log_every"] = 3
    with caplog.at_level("INFO", logger="clip_dinoiser.engine.training.loop"):
        train(cfg, torch.device("cpu"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iteration ")]
    step = (r"loss \d\.\d{4} \(dino \d\.\d{4}, found \d\.\d{4}\), agreement dino [01]\.\d{3}, found [01]\.\d{3}; "
            r"lr correlation [\d.e-]+, objectness [\d.e-]+; [\d.]+ s/iteration")
    assert [ln.split(":")[0] for ln in lines] == ["iteration 1/4", "iteration 3/4", "iteration 4/4"], lines
    assert all(re.fullmatch(rf"iteration \d/4: {step}", ln) for ln in lines), lines
    bar = capsys.readouterr().err
    assert re.search(r"train: 100%.*loss \d\.\d{4} \(dino .*agreement dino", bar), bar[-1000:]


def test_train_log_holds_the_losses_and_the_resume_command_and_loaders_fit_the_cores(tmp_path, tiny_clip_file,
                                                                                    tiny_teachers):
    """tools/train.py with the default loader processes (on a 2-core machine: no PyTorch warning
    about too many) stopped by train.stop_after: its train.log has a loss line per stage and the
    command that continues it."""
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CLIP_CFG))
    write_images(str(tmp_path / "imgs"), 4)
    t = tiny_teachers
    r = run_tool("train.py", "train.data=imgs", "train.output=run", f"model.clip.name={tmp_path / 'tiny.json'}",
                 f"model.clip.pretrained={tiny_clip_file[1]}", "model.proj_dim=16", "device=cpu", "train.im_size=64",
                 "train.batch_size=2", "train.epochs=3", "train.stop_after=2", "train.log_every=1",
                 f"teachers.dino.pretrained={t['dino']['pretrained']}",
                 f"teachers.found.pretrained={t['found']['pretrained']}",
                 f"teachers.found.decoder={t['found']['decoder']}",
                 *[f"+teachers.{k}.kwargs.{n}={v}" for k in ("dino", "found") for n, v in t[k]["kwargs"].items()],
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "worker processes in total" not in r.stderr, r.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert re.search(r"iteration 1/6: loss \d\.\d{4} \(dino", log) and "iteration 2/6: loss" in log, log
    assert f"continue with python tools/train.py train.resume={os.path.join('run')}" in log, log
    for stage in ("loading CLIP tiny (", "loading the teacher teachers.dino", "data-loading processes"):
        assert stage in log, stage


# ---------------------------------------------------------------- 5. the Python result offers what the demo shows


@pytest.fixture()
def segmenter(tiny_clip_file, tiny_heads_file):
    return clip_dinoiser.load(clip={"name": tiny_clip_file[0], "pretrained": tiny_clip_file[1]}, proj_dim=16,
                              weights=tiny_heads_file, slide=SLIDE, device="cpu")


def test_the_result_offers_the_demos_overlay_objectness_and_correlations(tmp_path, segmenter):
    from clip_dinoiser.engine.evaluation.inference import query_correlations
    from clip_dinoiser.engine.reporting.figures import segment_for_figure
    from clip_dinoiser.visualize import label_images

    image = random_image(70, 90, seed=8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    result = segmenter.segment(str(tmp_path / "photo.png"), ["cat", "sofa", "background"])
    other = segmenter.segment(image, ["dog", "tree"])  # the segmenter moves on: the first result keeps its classes
    assert result.name == "photo" and other.name == "image"
    expected = label_images(image, result.labels, result.classes, 0.5)[0]
    assert np.array_equal(np.asarray(result.overlay()), np.asarray(expected))
    assert np.array_equal(np.asarray(result.label_map()), result.labels)
    segmenter.model.set_vocabulary(["cat", "sofa", "background"])
    panels = segment_for_figure(segmenter.model, image, slide=segmenter.slide)
    np.testing.assert_array_equal(result.objectness, panels.objectness)
    np.testing.assert_array_equal(result.maskclip_labels, panels.maskclip)
    assert result.objectness.shape == (70, 90) and 0 <= result.objectness.min() <= result.objectness.max() <= 1
    by_demo = query_correlations(segmenter.model, image, (30, 40), scale=segmenter.slide.scale)
    got = result.correlations(30, 40)
    assert set(got) == {"CLIP-DINOiser"}
    np.testing.assert_allclose(got["CLIP-DINOiser"], by_demo["CLIP-DINOiser"][0], atol=1e-6)
    figure = result.figure(query=(30, 40))
    assert figure.size[0] > 4 * 90
    with pytest.raises(ValueError, match=r"query=\[200,40\] is outside the 90x70 image"):
        result.correlations(200, 40)
    written = result.save(str(tmp_path / "api"))  # the demo's files: tests/test_api.py compares them with the demo's
    assert [os.path.basename(p) for p in written] == ["photo_mask.png", "photo_labels.png", "photo_figure.png"]
    with pytest.raises(FileExistsError, match="would replace"):
        result.save(str(tmp_path / "api"))
    assert len(result.save(str(tmp_path / "api"), overwrite=True, figure=False)) == 2


# ---------------------------------------------------------------- 6. colours and fonts


def voc_devkit_colormap() -> np.ndarray:
    """VOCdevkit's ``labelcolormap.m``, written out again: the bits of the label, interleaved."""
    cmap = np.zeros((256, 3), np.uint8)
    for label in range(256):
        c, rgb = label, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << shift
            c >>= 3
        cmap[label] = rgb
    return cmap


@pytest.fixture(scope="module")
def tiny_model(tiny_clip_file, tiny_heads_file):
    from clip_dinoiser.models import build_model

    return build_model({"name": "clip_dinoiser", "clip": {"name": tiny_clip_file[0], "pretrained": tiny_clip_file[1]},
                        "checkpoint": tiny_heads_file, "proj_dim": 16})


@pytest.mark.parametrize("name", ["voc", "voc20", "context"])
def test_saved_predictions_are_in_the_benchmarks_own_colours_with_background_black(tmp_path, name, tiny_model):
    from clip_dinoiser.config import SlideConfig
    from clip_dinoiser.data.benchmarks import BENCHMARKS, dataset_class
    from clip_dinoiser.engine.evaluation.evaluate import Evaluator
    from clip_dinoiser.engine.evaluation.predictions import PredictionWriter

    from .synthetic_data import make_benchmark

    bench, model = BENCHMARKS[name], tiny_model
    root = make_benchmark(str(tmp_path / "data"), name, n=2)
    with Evaluator(slide=SlideConfig(scale=(256, 64), crop=(64, 64), stride=(32, 32)), num_workers=0) as ev:
        setting = ev.setting(model, bench, None, None)
        writer = PredictionWriter(str(tmp_path / "run"), bench, os.path.join(root, bench.ann_dir),
                                  setting.classes.names, predictions=True, examples=0)
        ev.evaluate_settings(model, bench, root, [setting], [writer])
    files = sorted((tmp_path / "run" / "predictions" / name).iterdir())
    assert len(files) == 2
    shift = 1 if name == "voc20" else 0
    own = np.array(dataset_class(bench.dataset).METAINFO["palette"], np.uint8)
    for path in files:
        png = Image.open(path)
        palette = np.array(png.getpalette()[:768], np.uint8).reshape(256, 3)
        if name in ("voc", "voc20"):
            assert np.array_equal(palette, voc_devkit_colormap())  # VOC's own label PNG palette, all 256 entries
        values = np.unique(np.asarray(png))
        for v in values:
            expected = (0, 0, 0) if name == "context" and v == 0 else tuple(own[v - shift])
            assert tuple(palette[v]) == expected, (v, palette[v], expected)
    if name != "voc20":
        assert tuple(palette[0]) == (0, 0, 0)  # background


def lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours (CIE 1976), for the colour distances below."""
    c = np.asarray(rgb, float) / 255
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    x, y, z = (c @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
               / [0.95047, 1, 1.08883]).T
    f = [np.where(t > 216 / 24389, np.cbrt(t), (24389 / 27 * t + 16) / 116) for t in (x, y, z)]
    return np.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])], -1)


def test_a_vocabularys_first_colours_are_far_apart_and_background_is_black():
    from clip_dinoiser.visualize import DISTINCT_COLOURS, farthest_colours, palette_for

    assert np.array_equal(np.array(DISTINCT_COLOURS, np.uint8), farthest_colours(256))  # the table is the algorithm's

    names = [f"class {i}" for i in range(20)]
    palette = palette_for(names)
    d = np.linalg.norm(lab(palette)[:, None] - lab(palette)[None], axis=-1) + np.eye(20) * 1e9
    assert d.min() > 35, d.min()  # CIE76: 2.3 is a just noticeable difference
    assert d[:10, :10].min() > 50
    assert not (palette == 0).all(1).any() and not (palette == 255).all(1).any()
    with_background = palette_for(["cat", "sofa", "background", "car"])
    assert tuple(with_background[2]) == (0, 0, 0) and np.array_equal(with_background[[0, 1, 3]], palette[[0, 1, 3]])


def colour_scales(rgb: np.ndarray, size: int) -> int:
    """How many horizontal viridis ramps (0 to 1, monotone, at least ``size`` pixels long) the
    picture holds, counted once per ramp."""
    from matplotlib import colormaps

    ramp = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).astype(float)
    found = []
    for y in range(rgb.shape[0]):
        row = rgb[y].astype(float)
        dist = np.linalg.norm(row[:, None] - ramp[None], axis=-1)
        t, ok = dist.argmin(1), dist.min(1) < 12
        x = 0
        while x < len(t):
            if ok[x] and t[x] < 20:
                end = x
                while end + 1 < len(t) and ok[end + 1] and t[end + 1] >= t[end] - 3:
                    end += 1
                if end - x + 1 >= size and t[end] > 235:
                    found.append((x, y))
                x = end + 1
            else:
                x += 1
    starts = sorted({x for x, _ in found})
    return len([x for i, x in enumerate(starts) if i == 0 or x - starts[i - 1] > 2])


def test_the_demo_figure_gives_its_heat_maps_colour_scales():
    from clip_dinoiser.engine.reporting.figures import FigureData, figure
    from clip_dinoiser.visualize import text_px

    image = random_image(120, 160, seed=3)
    labels = np.zeros((120, 160), np.int64)
    labels[:, 80:] = 1
    rng = np.random.default_rng(0)
    data = FigureData(labels, "CLIP-DINOiser", labels[::-1].copy(), rng.random((120, 160)),
                      {"CLIP-DINOiser": rng.random((120, 160))}, (40, 30))
    rgb = figure(image, data, ["cat", "background"])
    assert colour_scales(rgb, text_px(120)) == 2  # objectness, correlations


CJK_FONTS = [os.path.join(d, f) for d, _, fs in os.walk("/usr/share/fonts") for f in fs if "CJK" in f and
             f.endswith((".ttc", ".otf", ".ttf"))]


@pytest.mark.skipif(not CJK_FONTS, reason="no CJK font installed (Debian: apt-get install fonts-noto-cjk)")
def test_a_cjk_class_name_is_drawn_with_its_glyphs():
    """The legend's 猫 matches 猫 drawn with an installed CJK font (template match), not DejaVu
    Sans's "missing" box; no warning."""
    import cv2
    from PIL import ImageDraw, ImageFont

    from clip_dinoiser.visualize import MissingGlyphWarning, add_legend, palette_for, text_px

    image = np.full((200, 150, 3), 255, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingGlyphWarning)
        legend = add_legend(image, ["猫", "chien"], palette_for(["猫", "chien"]), [0, 1])
    size = text_px(200)
    gray = cv2.cvtColor(legend[:, 150:], cv2.COLOR_RGB2GRAY)
    scores = []
    for path in sorted(CJK_FONTS, key=lambda p: ("Sans" not in p, "Bold" in p)):
        glyph = Image.new("L", (3 * size, 2 * size), 255)
        ImageDraw.Draw(glyph).text((size // 2, size), "猫", fill=0, font=ImageFont.truetype(path, size), anchor="lm")
        template = np.asarray(glyph)
        ys, xs = np.nonzero(template < 128)
        template = template[ys.min() - 1: ys.max() + 2, xs.min() - 1: xs.max() + 2]
        scores.append(cv2.minMaxLoc(cv2.matchTemplate(gray, template, cv2.TM_CCOEFF_NORMED))[1])
    assert max(scores) > 0.9, scores


def test_a_glyph_no_installed_font_has_is_named_in_a_warning():
    from clip_dinoiser.visualize import MissingGlyphWarning, add_legend, palette_for

    name = "thing \U000f0000"  # a private-use character: no font has it
    with pytest.warns(MissingGlyphWarning, match=r"no installed font has a glyph for U\+F0000 .*fonts-noto-cjk"):
        add_legend(np.zeros((100, 100, 3), np.uint8), [name], palette_for([name]), [0])


# ---------------------------------------------------------------- 7. summaries


def write_run(folder, settings: dict, results: dict | None = None, curves: list | None = None) -> None:
    import yaml

    os.makedirs(folder)
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        yaml.safe_dump(settings, f)
    if results is not None:
        with open(os.path.join(folder, "results.json"), "w") as f:
            json.dump(results, f)
    if curves is not None:
        with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
            f.write("".join(json.dumps(row) + "\n" for row in curves))


def test_training_runs_without_evaluation_get_curves_and_no_empty_chart(tmp_path):
    from clip_dinoiser.engine.reporting.plots import curves_figure
    from clip_dinoiser.engine.reporting.summary import load_run, write_summary

    for i, lr in enumerate((0.01, 0.02)):
        rows = [{"iteration": it, "loss": 1 / it, "classes/cat": 0.7 - 0.01 * it, "classes/dog": 0.3 + 0.01 * it,
                 "pseudo/ignored": 0.1} for it in range(1, 5)]
        write_run(tmp_path / "runs" / f"target_{i}", {"train": {"lr": lr, "benchmark": "folder"}}, curves=rows)
    write_summary([str(tmp_path / "runs")], str(tmp_path / "summary"))
    assert sorted(os.listdir(tmp_path / "summary")) == ["curves.png", "summary.csv", "summary.md"]
    runs = [load_run(str(tmp_path / "runs" / f"target_{i}")) for i in range(2)]
    fig = curves_figure({f"target_{i}": r.curves for i, r in enumerate(runs)})
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert "classes/ (share of labelled pixels): target_0" in titles, titles
    shares = next(ax for ax in fig.axes if ax.get_title().endswith("target_0"))
    assert [line.get_label() for line in shares.get_lines()] == ["cat", "dog"]


def test_bar_labels_are_distinct_whole_and_zero_bars_show(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clip_dinoiser.engine.reporting.plots import plot_table
    from clip_dinoiser.engine.reporting.summary import load_run, tables

    base = {"model": {"name": "maskclip"}, "data": {"name": "context59", "corruption": None, "severity": 1}}
    points = [(None, 1, "a"), ("gaussian_noise", 1, "b"), ("gaussian_noise", 2, "c"), ("gaussian_noise", 2, "d")]
    for corruption, severity, folder in points:  # c and d: distinct runs with the same settings
        settings = {**base, "data": {**base["data"], "corruption": corruption, "severity": severity},
                    "output": folder}
        score = 0.0 if folder == "b" else 20.0
        write_run(tmp_path / folder, settings, {"context59": {"mIoU": score, "paper_mIoU": None}})
    (table,) = tables([load_run(str(tmp_path / f)) for _, _, f in points])
    fig, ax = plt.subplots()
    plot_table(ax, table)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    plt.close(fig)
    assert labels[0] == "clean" and "None" not in " ".join(labels), labels
    assert len(set(labels)) == 4, labels
    assert all(part == "clean" or "=" in part or part in "abcd"
               for label in labels for line in label.split("\n") for part in line.split(", ")), labels
    assert "corruption=gaussian_noise" in labels[1].split("\n")  # whole, not "gaussia n_noise"
    assert "0.0" in [t.get_text() for t in ax.texts]  # the zero bar is written on the chart


# ---------------------------------------------------------------- 8. CPU users


def test_the_readme_gives_a_cpu_only_install_line():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in quickstart
    install = open(os.path.join(ROOT, "docs", "install.md"), encoding="utf-8").read()
    assert "--index-url https://download.pytorch.org/whl/cpu" in install


def test_default_loader_processes_fit_the_cores_and_start_up_says_what_loads(monkeypatch, caplog, model_cfg):
    from clip_dinoiser.config import EvalConfig, TargetTrainSettings, TrainEvalConfig, TrainSettings
    from clip_dinoiser.engine.job.distributed import loader_processes
    from clip_dinoiser.models import build_model

    for settings in (EvalConfig, TrainSettings, TargetTrainSettings, TrainEvalConfig):
        assert settings.__dataclass_fields__["num_workers"].default is None, settings
    cores = len(os.sched_getaffinity(0))
    assert 1 <= loader_processes(None) <= min(cores, 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert loader_processes(None) == max(1, min(8, cores // 2)) and loader_processes(3) == 3
    with caplog.at_level("INFO", logger="clip_dinoiser"):
        model = build_model(model_cfg)
        model.set_vocabulary(["a first-day cat", "a first-day dog"])  # names no other test encodes
    said = caplog.text
    for stage in ("loading CLIP tiny-ViT-test (", "CLIP tiny-ViT-test loaded in", "loading the CLIP-DINOiser heads ",
                  "encoding 2 class names with CLIP's text tower (80 prompt templates each)"):
        assert stage in said, stage
