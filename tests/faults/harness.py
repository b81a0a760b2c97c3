"""The fault battery's harness: tiny models and ready-made runs on disk (``Fixtures``), one case's
folder, commands and snapshots (``Ctx``), the classification of an outcome (``ok``, ``traceback``,
``wrong-result``, ``lost``, ``unclear``; see ``tests/faults/__init__.py``) and its report."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(ROOT, "tools")

OK, TRACEBACK, WRONG, LOST, UNCLEAR = "ok", "traceback", "wrong-result", "lost", "unclear"
CLASSES = (OK, TRACEBACK, WRONG, LOST, UNCLEAR)

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_TEACHERS = {
    "dino": ("vit_base_patch16_224", {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 64}),
    "found": ("vit_small_patch8_224", {"depth": 2, "embed_dim": 24, "num_heads": 2, "img_size": 64}),
}
SLIDE = ["slide.scale=[256,64]", "slide.crop=[64,64]", "slide.stride=[32,32]", "slide.window_batch=8"]
SLIDE_DICT = {"scale": [256, 64], "crop": [64, 64], "stride": [32, 32], "window_batch": 8}
TARGET = ["target.backbone=resnet101c", "target.pretrained=null", "+target.kwargs.layers=[1,1,1,1]",
          "+target.kwargs.channels=[8,16,32,32]", "+target.kwargs.stem_width=8"]
BOMB_ENV = {"CLIP_DINOISER_MAX_IMAGE_PIXELS": "1000"}  # a 100 x 100 image is above twice the limit
NON_UTF8 = b"cat\n\xff\xfe\xfa dog\n"
NON_UTF8_JSON = b'{"embed_dim": 32, "n\xff": 1}'


# ---------------------------------------------------------------- images and folders


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A structured RGB uint8 image (blocks of colour plus noise), as tests/conftest.py's."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, h), rng.integers(0, w)
        img[y : y + max(h // 3, 1), x : x + max(w // 3, 1)] = rng.integers(0, 255, 3)
    return np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


def save_image(path: str, h: int = 40, w: int = 56, seed: int = 0) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(random_image(h, w, seed)).save(path)
    return path


def label_map(h: int, w: int, seed: int, border: bool = True, n: int = 21) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, n, (4, 4)).astype(np.uint8)
    labels = np.kron(small, np.ones((h // 4 + 1, w // 4 + 1), np.uint8))[:h, :w]
    if border and h > 4:
        labels[:2] = 255
    return labels


def write_voc(root: str, sizes: Sequence[tuple[int, int]] = ((60, 80), (48, 64)), split: str = "val",
              border: bool = True) -> list[str]:
    """A VOC 2012 folder (mmseg's layout) with one image and label per size; returns the ids."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    ids = []
    for i, (h, w) in enumerate(sizes):
        ids.append(f"2007_{i:06d}")
        Image.fromarray(random_image(h, w, seed=i)).save(os.path.join(root, "JPEGImages", f"{ids[-1]}.jpg"),
                                                        quality=95)
        Image.fromarray(label_map(h, w, seed=10 + i, border=border)).save(
            os.path.join(root, "SegmentationClass", f"{ids[-1]}.png"))
    with open(os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return ids


def write_images(folder: str, n: int, size: tuple[int, int] = (80, 100), nested: bool = True) -> str:
    for i in range(n):
        sub = os.path.join(folder, f"n{i % 2:08d}") if nested else folder
        save_image(os.path.join(sub, f"img_{i}.png"), *size, seed=100 + i)
    return folder


def truncate(path: str, keep: float = 0.5) -> str:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: max(1, int(len(data) * keep))])
    return path


def garbage(path: str, data: bytes = b"this is not what the name says\n" * 4) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def save_16bit(path: str, array: np.ndarray) -> str:
    Image.fromarray(array.astype(np.uint16)).save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- snapshots (lost files)


def snapshot(folders: Iterable[str], skip: Iterable[str] = ()) -> dict[str, tuple]:
    """path -> (kind, digest) of every file and link below ``folders`` (links not followed)."""
    skip = [os.path.abspath(s) for s in skip]
    out: dict[str, tuple] = {}
    for top in folders:
        for folder, subfolders, files in os.walk(top):
            subfolders[:] = [d for d in subfolders if os.path.abspath(os.path.join(folder, d)) not in skip]
            for name in files + [d for d in subfolders if os.path.islink(os.path.join(folder, d))]:
                path = os.path.join(folder, name)
                if os.path.islink(path):
                    out[path] = ("link", os.readlink(path))
                elif os.path.isfile(path):
                    with open(path, "rb") as f:
                        out[path] = ("file", hashlib.sha1(f.read()).hexdigest(), os.path.getsize(path))
    return out


# ---------------------------------------------------------------- results of a command


@dataclasses.dataclass
class Proc:
    cmd: list[str]
    rc: int | None
    out: str
    err: str
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def last(self) -> str:
        """The last line of stderr (where the tools write their errors and logs)."""
        lines = [ln.strip() for ln in self.err.splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    @property
    def last_any(self) -> str:
        """The last line of stdout (the tools' logs), else of stderr."""
        lines = [ln.strip() for ln in self.out.splitlines() if ln.strip()]
        return lines[-1] if lines else self.last

    def shown(self) -> str:
        return " ".join(shlex.quote(a) for a in self.cmd)


@dataclasses.dataclass
class Outcome:
    klass: str
    message: str
    note: str = ""



@dataclasses.dataclass
class Case:
    """One case: the tool it drives, its name, the expected behaviour, and the function that runs
    it in a ``Ctx`` and classifies the outcome."""

    tool: str
    name: str
    expect: str
    fn: Callable[[Ctx], Outcome]
    group: str = ""  # the class of fault of an issue it checks (issue #31: "1 full disk", ...)

    @property
    def key(self) -> str:
        return f"{self.tool}/{self.name}"


class Ctx:
    """One case: its folder (the working directory of its commands), the fixtures, what it ran
    and the files it lost."""

    def __init__(self, fx: Fixtures, folder: str) -> None:
        self.fx, self.dir = fx, folder
        os.makedirs(folder, exist_ok=True)
        self.procs: list[Proc] = []
        self.lost: list[str] = []
        self.notes: list[str] = []

    def p(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    # -- snapshots
    def snap(self) -> tuple[dict, dict[str, bytes]]:
        shot = snapshot([self.dir, self.fx.dir], skip=[self.fx.cache])
        logs = {p: open(p, "rb").read() for p, v in shot.items() if v[0] == "file" and _appendable(p)}
        return shot, logs

    def compare(self, before: tuple[dict, dict[str, bytes]], allowed: Sequence[str] = ()) -> list[str]:
        """Files of ``before`` changed, replaced or deleted (``allowed``: fnmatch patterns relative
        to the case folder that the command may change); new files (relative paths) are returned."""
        shot, logs = before
        after = snapshot([self.dir, self.fx.dir], skip=[self.fx.cache])
        for path, value in shot.items():
            rel = os.path.relpath(path, self.dir)
            if any(fnmatch.fnmatch(rel, pat) for pat in allowed):
                continue
            now = after.get(path)
            if now == value:
                continue
            if path in logs and now is not None and open(path, "rb").read().startswith(logs[path]):
                continue  # a log that grew
            what = "deleted" if now is None else "changed"
            self.lost.append(f"{rel} {what}")
        return [os.path.relpath(p, self.dir) for p in after if p not in shot]

    # -- commands
    def tool(self, script: str, *args: str, env: dict[str, str] | None = None, timeout: int = 300,
             allowed: Sequence[str] = ()) -> tuple[Proc, list[str]]:
        """Run ``tools/<script>`` in the case folder; (the result, the files it created)."""
        before = self.snap()
        proc = run_command([sys.executable, os.path.join(TOOLS, script), *args], cwd=self.dir,
                           env=self.fx.env(env), timeout=timeout)
        self.procs.append(proc)
        created = self.compare(before, allowed)
        return proc, created

    def popen(self, script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        cmd = [sys.executable, os.path.join(TOOLS, script), *args]
        proc = subprocess.Popen(cmd, cwd=self.dir, env=self.fx.env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace")
        proc.cmd_list = cmd  # type: ignore[attr-defined]
        return proc

    def finish(self, proc: subprocess.Popen, timeout: int = 300) -> Proc:
        t0 = time.time()
        try:
            out, err = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            timed_out = True
        result = Proc(proc.cmd_list, None if timed_out else proc.returncode, out, err,  # type: ignore[attr-defined]
                      time.time() - t0, timed_out)
        self.procs.append(result)
        return result

    # -- classification
    def error(self, proc: Proc, *names: str, created: Sequence[str] = (), leave: Sequence[str] = ()) -> Outcome:
        """A user error: exit 2, the last line ``error: ...`` naming each of ``names``, no traceback,
        nothing new left in the case folder (but ``leave`` patterns)."""
        left = [c for c in created if not any(fnmatch.fnmatch(c, pat) for pat in leave)]
        if proc.timed_out:
            return Outcome(WRONG, "still running at the timeout: the bad input was not refused")
        if "Traceback" in proc.err:
            return Outcome(TRACEBACK, proc.last, f"exit {proc.rc}")
        if proc.rc == 0:
            return Outcome(WRONG, "exit 0: the bad input was accepted", proc.last)
        if proc.rc != 2:
            return Outcome(TRACEBACK, proc.last, f"exit {proc.rc}, expected 2")
        if not (proc.last.startswith("error: ") or _argparse_error(proc.last)):
            return Outcome(UNCLEAR, proc.last, "the last line is not 'error: ...'")
        missing = [n for n in names if n.lower() not in proc.last.lower()]
        if missing:
            return Outcome(UNCLEAR, proc.last, f"does not name {', '.join(missing)}")
        if left:
            return Outcome(WRONG, proc.last, f"left behind: {', '.join(sorted(left)[:5])}")
        return Outcome(OK, proc.last)

    def success(self, proc: Proc, check: Callable[[], str | None] | None = None) -> Outcome:
        """A valid input: exit 0, no traceback, and ``check()`` (None: the result is right)."""
        if proc.timed_out:
            return Outcome(TRACEBACK, "timed out", "expected exit 0")
        if "Traceback" in proc.err:
            return Outcome(TRACEBACK, proc.last, f"exit {proc.rc}")
        if proc.rc != 0:
            return Outcome(TRACEBACK, proc.last, f"exit {proc.rc}, expected 0")
        if check is not None:
            try:
                problem = check()
            except Exception as e:  # the result is missing or unreadable
                problem = f"result unreadable: {type(e).__name__}: {e}"
            if problem:
                return Outcome(WRONG, problem, proc.last)
        return Outcome(OK, proc.last_any or "exit 0")

    def interrupted(self, proc: Proc, signum: int, check: Callable[[], str | None] | None = None) -> Outcome:
        name = signal.Signals(signum).name
        if proc.timed_out:
            return Outcome(TRACEBACK, f"still running after {name}", "expected it to stop")
        if "Traceback" in proc.err:
            return Outcome(TRACEBACK, proc.last, f"exit {proc.rc}")
        if proc.rc == 0:
            return Outcome(WRONG, f"exit 0: finished before {name} arrived (make the case longer)", proc.last)
        if proc.rc != 128 + signum:
            return Outcome(TRACEBACK, proc.last, f"exit {proc.rc}, expected {128 + signum}")
        if name not in proc.last:
            return Outcome(UNCLEAR, proc.last, f"the last line does not say {name}")
        if check is not None:
            problem = check()
            if problem:
                return Outcome(WRONG, problem, proc.last)
        return Outcome(OK, proc.last)


def _appendable(path: str) -> bool:
    return path.endswith((".log", ".jsonl"))


def _argparse_error(line: str) -> bool:
    """argparse's own one-line form: ``<prog>: error: ...``."""
    head, sep, _ = line.partition(": error: ")
    return bool(sep) and head.endswith(".py") and " " not in head


def run_command(cmd: list[str], *, cwd: str, env: dict[str, str], timeout: int) -> Proc:
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, errors="replace", timeout=timeout)
        return Proc(cmd, r.returncode, r.stdout, r.stderr, time.time() - t0)
    except subprocess.TimeoutExpired as e:  # subprocess.run killed it
        def text(x):
            return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")

        return Proc(cmd, None, text(e.stdout), text(e.stderr), time.time() - t0, timed_out=True)


# ---------------------------------------------------------------- fixtures


class Fixtures:
    """Tiny models on disk and ready-made runs, built once in ``base/fixtures``."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.dir = os.path.join(base, "fixtures")
        self.cache = os.path.join(base, "cache")
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs(self.cache, exist_ok=True)
        self._lazy: dict[str, Any] = {}
        self.build()

    def f(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "CLIP_DINOISER_MAX_IMAGE_PIXELS"}
        env.update({"XDG_CACHE_HOME": self.cache, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                    "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"})
        env.update(extra or {})
        return env

    def build(self) -> None:
        import open_clip
        import timm
        import torch

        from clip_dinoiser.models import DINOiserHeads, save_heads

        self.clip_json = self.f("tiny.json")
        with open(self.clip_json, "w") as f:
            json.dump(TINY_CLIP_CFG, f)
        open_clip.add_model_config(self.clip_json)
        torch.manual_seed(0)
        model = open_clip.create_model("tiny")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        self.clip = self.f("clip.pt")
        torch.save(model.state_dict(), self.clip)
        torch.manual_seed(1)
        self.heads = self.f("heads.pt")
        save_heads(DINOiserHeads(in_dim=64, proj_dim=16, kernel_size=3), self.heads)
        torch.manual_seed(2)
        self.teacher = {}
        for key, (arch, kwargs) in TINY_TEACHERS.items():
            vit = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
            with torch.no_grad():
                for p in vit.parameters():
                    p.add_(0.05 * torch.randn_like(p))
            self.teacher[key] = self.f(f"{key}.pth")
            torch.save(vit.state_dict(), self.teacher[key])
        self.decoder = self.f("decoder_weights.pt")
        torch.save({"decoder": {"weight": torch.randn(1, 24, 1, 1) * 0.3, "bias": torch.zeros(1)}}, self.decoder)
        self.images = write_images(self.f("imgs"), 4)
        self.classes = self.f("classes.txt")
        with open(self.classes, "w") as f:
            f.write("red thing\ngreen thing\nblue thing\n")

    # -- arguments
    def model(self, key: str = "model") -> list[str]:
        return [f"{key}.clip.name={self.clip_json}", f"{key}.clip.pretrained={self.clip}",
                f"{key}.checkpoint={self.heads}", f"{key}.proj_dim=16"]

    def eval_args(self, root: str = "voc", output: str = "out") -> list[str]:
        return ["data=voc", f"data.root={root}", f"output={output}", "num_workers=0", "progress=false", "device=cpu",
                *SLIDE, *self.model()]

    def demo_args(self, image: str = "photo.png", output: str = "out") -> list[str]:
        return [f"image={image}", "prompts=[cat,dog,background]", f"output={output}", "device=cpu", "progress=false",
                *SLIDE, *self.model()]

    def app_args(self, port: int | None = None) -> list[str]:
        return [f"port={port or free_port()}", "device=cpu", *SLIDE, *self.model()]

    def train_args(self, data: str | None = None, output: str = "run") -> list[str]:
        kwargs = [f"+teachers.{k}.kwargs.{n}={v}" for k, (_, kw) in TINY_TEACHERS.items() for n, v in kw.items()]
        return [f"train.data={data or self.images}", f"train.output={output}", f"model.clip.name={self.clip_json}",
                f"model.clip.pretrained={self.clip}", "model.proj_dim=16", "device=cpu", "train.im_size=64",
                "train.batch_size=2", "train.epochs=3", "train.num_workers=0", "train.save_every=2",
                f"teachers.dino.pretrained={self.teacher['dino']}",
                f"teachers.found.pretrained={self.teacher['found']}", f"teachers.found.decoder={self.decoder}",
                *kwargs]

    def target_args(self, data: str | None = None, output: str = "run", vocabulary: str | None = None) -> list[str]:
        return [*self.model("annotator"), "device=cpu", "train.num_workers=0", "train.crop=[48,48]",
                "train.scale=[64,48]", *TARGET, "train.benchmark=folder", f"train.data={data or self.images}",
                f"train.vocabulary={vocabulary or self.classes}", "train.batch_size=2", "train.iterations=4",
                "train.save_every=2", f"train.output={output}"]

    # -- ready-made runs (copied into the cases that need them)
    def _made(self, name: str, make: Callable[[str], None]) -> str:
        if name not in self._lazy:
            folder = self.f("runs", name)
            os.makedirs(os.path.dirname(folder), exist_ok=True)
            make(folder)
            self._lazy[name] = folder
        return self._lazy[name]

    def _tool(self, script: str, *args: str) -> None:
        r = run_command([sys.executable, os.path.join(TOOLS, script), *args], cwd=self.dir, env=self.env(),
                        timeout=600)
        if r.rc != 0:
            raise RuntimeError(f"fixture {script} failed (exit {r.rc}):\n{r.err[-3000:]}")

    def eval_run(self) -> str:
        def make(folder: str) -> None:
            root = self.f("voc_base")
            if not os.path.isdir(root):
                write_voc(root)
            self._tool("eval.py", *self.eval_args(root, folder))

        return self._made("eval", make)

    def train_run(self) -> str:
        """A finished training run: 6 iterations, checkpoints 4 and 6, last.pt."""
        return self._made("train", lambda folder: self._tool("train.py", *self.train_args(output=folder)))

    def stopped_run(self) -> str:
        """A training run stopped after iteration 2 of 6 (checkpoint 2, no last.pt)."""
        return self._made("stopped", lambda folder: self._tool("train.py", *self.train_args(output=folder),
                                                               "train.stop_after=2"))

    def target_run(self) -> str:
        """A finished MaskCLIP+ run of 4 iterations."""
        return self._made("target", lambda folder: self._tool("train_target.py", *self.target_args(output=folder)))

    def copy_run(self, ctx: Ctx, source: str, name: str = "run") -> str:
        dest = ctx.p(name)
        shutil.copytree(source, dest, symlinks=True)
        return name

    def segmenter(self):
        if "segmenter" not in self._lazy:
            import clip_dinoiser

            self._lazy["segmenter"] = clip_dinoiser.load(
                "clip_dinoiser", weights=self.heads, device="cpu",
                clip={"name": self.clip_json, "pretrained": self.clip}, proj_dim=16, slide=SLIDE_DICT)
        return self._lazy["segmenter"]

    def app_module(self):
        if "app" not in self._lazy:
            spec = importlib.util.spec_from_file_location("fault_battery_app", os.path.join(TOOLS, "app.py"))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            from clip_dinoiser.config import SlideConfig

            seg = self.segmenter()
            self._lazy["app"] = (module, module.Segmenter(seg.model, SlideConfig(**{k: tuple(v) if isinstance(v, list)
                                                                                   else v
                                                                                   for k, v in SLIDE_DICT.items()}),
                                                          "fp32", 0.5))
        return self._lazy["app"]


# ---------------------------------------------------------------- checks of results


def miou_problem(out: str, root: str, ids: Sequence[str], benchmark: str = "voc", classes: int = 21) -> str | None:
    """None if ``out/results.json``'s mIoU equals a numpy computation on the saved predictions
    against the label files (ignore 255), and every prediction has its label's size."""
    results = json.load(open(os.path.join(out, "results.json")))[benchmark]
    conf = np.zeros((classes, classes), np.int64)
    for image_id in ids:
        label = np.asarray(Image.open(os.path.join(root, "SegmentationClass", f"{image_id}.png"))).astype(np.int64)
        pred_path = os.path.join(out, "predictions", benchmark, f"{image_id}.png")
        if not os.path.isfile(pred_path):
            return f"no prediction saved for {image_id}"
        pred = np.asarray(Image.open(pred_path)).astype(np.int64)
        if pred.shape != label.shape:
            return f"prediction of {image_id} is {pred.shape}, its label {label.shape}"
        valid = label != 255
        np.add.at(conf, (label[valid], pred[valid]), 1)
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = float(np.nanmean(np.where(union > 0, inter / union, np.nan)) * 100)
    if results["images"] != len(ids):
        return f"results.json counts {results['images']} images, expected {len(ids)}"
    reported = results["mIoU"]
    if reported is None or abs(reported - expected) > 1e-6:
        return f"results.json mIoU {reported} != numpy {expected:.6f}"
    return None


def demo_problem(ctx: Ctx, stem: str, shape: tuple[int, int], classes: int = 3, out: str = "out") -> str | None:
    path = ctx.p(out, f"{stem}_labels.png")
    if not os.path.isfile(path):
        return f"{out}/{stem}_labels.png not written"
    labels = np.asarray(Image.open(path))
    if labels.shape != shape:
        return f"{stem}_labels.png is {labels.shape}, the image {shape}"
    if labels.max() >= classes:
        return f"{stem}_labels.png holds class {labels.max()} of {classes}"
    for kind in ("mask", "figure"):
        if not os.path.isfile(ctx.p(out, f"{stem}_{kind}.png")):
            return f"{out}/{stem}_{kind}.png not written"
    return None


def checkpoints(folder: str) -> list[int]:
    ck = os.path.join(folder, "checkpoints")
    return sorted(int(n[5:12]) for n in os.listdir(ck) if n.startswith("iter_")) if os.path.isdir(ck) else []



# ---------------------------------------------------------------- one case, and its report


def traceback_tail() -> str:
    """The last lines of the traceback being handled."""
    return "".join(traceback.format_exc().splitlines(True)[-6:])


def run_case(fx: Fixtures, c: Case, index: int, base: str) -> tuple[Outcome, Ctx]:
    """Run case ``c`` (number ``index``) in its own folder under ``base/cases``; its outcome is
    ``lost`` whatever the case found if a file it should have left alone changed."""
    slug = "".join(ch if ch.isalnum() else "_" for ch in c.key)[:60]
    ctx = Ctx(fx, os.path.join(base, "cases", f"{index:03d}_{slug}"))
    try:
        outcome = c.fn(ctx)
    except Exception as e:  # a fault of the battery itself (or a fixture): reported, the battery goes on
        outcome = Outcome(TRACEBACK, f"battery: {type(e).__name__}: {e}".splitlines()[0], traceback_tail())
    if ctx.lost:
        outcome = Outcome(LOST, "; ".join(ctx.lost[:4]), f"{outcome.klass}: {outcome.message}")
    return outcome, ctx


def detail(c: Case, outcome: Outcome, ctx: Ctx) -> str:
    """What a case that is not ok found: its class, the last two commands (folder, exit code and
    the tail of stderr)."""
    lines = [f"* {c.key} [{outcome.klass}] expected: {c.expect}", f"  finding: {outcome.message}"]
    if outcome.note:
        lines.append("  note: " + outcome.note.strip().replace("\n", "\n        "))
    for proc in ctx.procs[-2:]:
        lines.append(f"  command (in {ctx.dir}): {proc.shown()}")
        tail = [ln for ln in proc.err.splitlines() if ln.strip()][-8:]
        lines.append(f"  exit: {proc.rc}{' (timed out)' if proc.timed_out else ''}; stderr tail:")
        lines += [f"    {ln[:300]}" for ln in tail]
    return "\n".join(lines)
