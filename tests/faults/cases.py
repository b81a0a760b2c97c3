"""The fault battery's cases: bad inputs and faults thrown at every tool, each registered with
its tool, its name and the behaviour expected (``add`` / ``@case``), in the order they run.
``tests/faults/test_faults.py`` makes one test of each."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from .harness import (
    BOMB_ENV,
    NON_UTF8,
    NON_UTF8_JSON,
    OK,
    SLIDE_DICT,
    TRACEBACK,
    UNCLEAR,
    WRONG,
    Case,
    Ctx,
    Outcome,
    Proc,
    checkpoints,
    demo_problem,
    garbage,
    label_map,
    miou_problem,
    random_image,
    save_16bit,
    save_image,
    traceback_tail,
    truncate,
    write_images,
    write_voc,
)

CASES: list[Case] = []


def add(tool: str, name: str, expect: str, fn: Callable[[Ctx], Outcome], group: str = "") -> None:
    CASES.append(Case(tool, name, expect, fn, group))


def case(tool: str, name: str, expect: str, group: str = ""):
    def register(fn: Callable[[Ctx], Outcome]) -> Callable[[Ctx], Outcome]:
        add(tool, name, expect, fn, group)
        return fn

    return register


# ---------------------------------------------------------------- eval: settings

EVAL_SETTINGS = [
    ("model.gamma=nan", "model.gamma"), ("model.gamma=inf", "model.gamma"), ("model.gamma=1.5", "model.gamma"),
    ("model.delta=-5", "model.delta"), ("model.delta=nan", "model.delta"),
    ("model.maskclip.temperature=0", "model.maskclip.temperature"),
    ("model.maskclip.temperature=-inf", "model.maskclip.temperature"),
    ("model.maskclip.ks_thresh=nan", "model.maskclip.ks_thresh"),
    ("model.maskclip.pd_thresh=2", "model.maskclip.pd_thresh"),
    ("model.proj_dim=0", "model.proj_dim"), ("model.kernel_size=2", "model.kernel_size"),
    ("model.feats_idx=99", "model.feats_idx"), ("model.feats_idx=1.5", "model.feats_idx"),
    ("slide.stride=[0,0]", "slide.stride"), ("slide.crop=[-64,64]", "slide.crop"),
    ("slide.scale=[inf,64]", "slide.scale"),
    ("slide.window_batch=nan", "slide.window_batch"), ("slide.stride=[32]", "slide.stride"),
    ("slide.crop=[64,64,64]", "slide.crop"), ("loader_batch=0", "loader_batch"), ("num_workers=-1", "num_workers"),
    ("limit=0", "limit"), ("save_examples=-1", "save_examples"), ("precision=fp8", "precision"),
    ("device=tpu", "device"), ("data.name=bogus", "bogus"), ("data=bogus", "bogus"),
    ("model.gama=0.3", "gamma"), ("num_workerz=1", "num_workers"), ("model.gamma=abc", "model.gamma"),
    ("slide.stride=abc", "slide.stride"), ("model.name=bogus", "bogus"), ("model.maskclip.templates=bogus", "bogus"),
    ("model.pooling=nosuch.module.fn", "model.pooling"), ("model.clip.backbone=bogus", "model.clip.backbone"),
    ("sweep={model.gamma:[nan]}", "model.gamma"), ("sweep={model.gamma:[0.1,0.1]}", "model.gamma"),
    ("sweep={model.gamma:[]}", "model.gamma"), ("sweep={model.gama:[0.1]}", "model.gama"),
    ("sweep={model.delta:[0.5,2]}", "model.delta"), ("sweep={slide.stride:[[0,0]]}", "slide.stride"),
]


def _eval_setting(setting: str, name: str) -> Callable[[Ctx], Outcome]:
    def run(ctx: Ctx) -> Outcome:
        write_voc(ctx.p("voc"))
        r, created = ctx.tool("eval.py", *ctx.fx.eval_args(), setting)
        return ctx.error(r, name, created=created)

    return run


for _setting, _name in EVAL_SETTINGS:
    add("eval", _setting, "error", _eval_setting(_setting, _name))


# ---------------------------------------------------------------- eval: files


def _eval_file(change: Callable[[Ctx, list[str]], Sequence[str] | None], *names: str,
               extra: Sequence[str] = (), sizes=((60, 80), (48, 64))) -> Callable[[Ctx], Outcome]:
    """A VOC folder ``voc`` changed by ``change(ctx, ids)`` (which may return more arguments)."""

    def run(ctx: Ctx) -> Outcome:
        ids = write_voc(ctx.p("voc"), sizes)
        more = change(ctx, ids) or ()
        r, created = ctx.tool("eval.py", *ctx.fx.eval_args(), *extra, *more)
        return ctx.error(r, *names, created=created)

    return run


def _img(ctx: Ctx, i: int = 1) -> str:
    return ctx.p("voc", "JPEGImages", f"2007_{i:06d}.jpg")


def _lbl(ctx: Ctx, i: int = 1) -> str:
    return ctx.p("voc", "SegmentationClass", f"2007_{i:06d}.png")


def _replace_with_folder(path: str) -> None:
    os.remove(path)
    os.makedirs(path)


add("eval", "data.root missing", "error", _eval_file(lambda c, ids: ["data.root=nowhere"], "nowhere"))
add("eval", "image missing", "error", _eval_file(lambda c, ids: os.remove(_img(c)), "2007_000001.jpg"))
add("eval", "image truncated", "error", _eval_file(lambda c, ids: truncate(_img(c), 0.3) and None, "2007_000001.jpg"))
add("eval", "image garbage", "error", _eval_file(lambda c, ids: garbage(_img(c)) and None, "2007_000001.jpg"))
add("eval", "image empty file", "error", _eval_file(lambda c, ids: garbage(_img(c), b"") and None, "2007_000001.jpg"))
add("eval", "image is a folder", "error", _eval_file(lambda c, ids: _replace_with_folder(_img(c)), "2007_000001.jpg"))
add("eval", "label missing", "error", _eval_file(lambda c, ids: os.remove(_lbl(c)), "2007_000001.png"))
add("eval", "label garbage", "error", _eval_file(lambda c, ids: garbage(_lbl(c)) and None, "2007_000001.png"))
add("eval", "label truncated", "error", _eval_file(lambda c, ids: truncate(_lbl(c), 0.5) and None, "2007_000001.png"))
add("eval", "label is a folder", "error", _eval_file(lambda c, ids: _replace_with_folder(_lbl(c)), "2007_000001.png"))
add("eval", "label 16-bit with 300", "error",
    _eval_file(lambda c, ids: save_16bit(_lbl(c), np.full((48, 64), 300)) and None, "2007_000001.png"))
add("eval", "label of another size (30x40)", "error",
    _eval_file(lambda c, ids: Image.fromarray(np.zeros((30, 40), np.uint8)).save(_lbl(c)), "2007_000001.png"))
add("eval", "label 1xN for an image HxN", "error",
    _eval_file(lambda c, ids: Image.fromarray(np.zeros((1, 64), np.uint8)).save(_lbl(c)), "2007_000001.png"))
add("eval", "label RGB (3 channels)", "error",
    _eval_file(lambda c, ids: Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(_lbl(c)), "2007_000001.png"))
add("eval", "label value 50 of 21 classes", "error",
    _eval_file(lambda c, ids: Image.fromarray(np.full((48, 64), 50, np.uint8)).save(_lbl(c)), "2007_000001.png"))


def _empty_split(ctx: Ctx, ids: list[str]) -> None:
    open(ctx.p("voc", "ImageSets", "Segmentation", "val.txt"), "w").close()


def _split_extra_id(ctx: Ctx, ids: list[str]) -> None:
    with open(ctx.p("voc", "ImageSets", "Segmentation", "val.txt"), "a") as f:
        f.write("2099_999999\n")


def _split_non_utf8(ctx: Ctx, ids: list[str]) -> None:
    garbage(ctx.p("voc", "ImageSets", "Segmentation", "val.txt"), b"2007_000000\n2007_\xff\xfe000001\n")


def _split_missing(ctx: Ctx, ids: list[str]) -> None:
    os.remove(ctx.p("voc", "ImageSets", "Segmentation", "val.txt"))


def _split_folder(ctx: Ctx, ids: list[str]) -> None:
    _replace_with_folder(ctx.p("voc", "ImageSets", "Segmentation", "val.txt"))


add("eval", "empty split", "error", _eval_file(_empty_split, "val.txt"))
add("eval", "split lists a missing image", "error", _eval_file(_split_extra_id, "2099_999999"))
add("eval", "split file not UTF-8", "error", _eval_file(_split_non_utf8, "val.txt"))
add("eval", "split file missing", "error", _eval_file(_split_missing, "val.txt"))
add("eval", "split file is a folder", "error", _eval_file(_split_folder, "val.txt"))


def _own_benchmark(ctx: Ctx, classes: str, images: int = 0) -> list[str]:
    os.makedirs(ctx.p("own", "images"), exist_ok=True)
    os.makedirs(ctx.p("own", "annotations"), exist_ok=True)
    for i in range(images):
        save_image(ctx.p("own", "images", f"a{i}.jpg"), 30, 40, seed=i)
        Image.fromarray(label_map(30, 40, i, n=3)).save(ctx.p("own", "annotations", f"a{i}.png"))
    return ["data.name=own", "data.root=own", f"+data.benchmark={{classes:{classes}}}"]


@case("eval", "own benchmark: no images, no split", "error")
def _(ctx: Ctx) -> Outcome:
    more = _own_benchmark(ctx, ctx.fx.classes)
    r, created = ctx.tool("eval.py", *ctx.fx.eval_args(), *more)
    return ctx.error(r, "images", created=created)


@case("eval", "own benchmark: classes file missing", "error")
def _(ctx: Ctx) -> Outcome:
    more = _own_benchmark(ctx, "nothing.txt", images=1)
    r, created = ctx.tool("eval.py", *ctx.fx.eval_args(), *more)
    return ctx.error(r, "nothing.txt", created=created)


@case("eval", "own benchmark: classes file not UTF-8", "error")
def _(ctx: Ctx) -> Outcome:
    garbage(ctx.p("cls.txt"), NON_UTF8)
    more = _own_benchmark(ctx, "cls.txt", images=1)
    r, created = ctx.tool("eval.py", *ctx.fx.eval_args(), *more)
    return ctx.error(r, "cls.txt", created=created)


@case("eval", "own benchmark: classes file empty", "error")
def _(ctx: Ctx) -> Outcome:
    garbage(ctx.p("cls.txt"), b"\n# nothing\n")
    more = _own_benchmark(ctx, "cls.txt", images=1)
    r, created = ctx.tool("eval.py", *ctx.fx.eval_args(), *more)
    return ctx.error(r, "cls.txt", created=created)


@case("eval", "own benchmark: unknown key in data.benchmark", "error")
def _(ctx: Ctx) -> Outcome:
    more = _own_benchmark(ctx, ctx.fx.classes, images=1)
    more[-1] = f"+data.benchmark={{classes:{ctx.fx.classes},img_dirr:x}}"
    r, created = ctx.tool("eval.py", *ctx.fx.eval_args(), *more)
    return ctx.error(r, "img_dirr", created=created)


def _vocab_file(data: bytes | None, name: str = "vocab.txt") -> Callable[[Ctx, list[str]], list[str]]:
    def change(ctx: Ctx, ids: list[str]) -> list[str]:
        if data is not None:
            garbage(ctx.p(name), data)
        return [f"data.vocabulary={name}"]

    return change


add("eval", "data.vocabulary missing", "error", _eval_file(_vocab_file(None), "vocab.txt"))
add("eval", "data.vocabulary not UTF-8", "error", _eval_file(_vocab_file(NON_UTF8), "vocab.txt"))
add("eval", "data.vocabulary empty", "error", _eval_file(_vocab_file(b""), "vocab.txt"))
add("eval", "data.vocabulary 3 names for 21 classes", "error",
    _eval_file(_vocab_file(b"cat\ndog\nbackground\n"), "data.vocabulary"))
add("eval", "data.vocabulary is a folder", "error",
    _eval_file(lambda c, ids: os.makedirs(c.p("vocab.txt")) or ["data.vocabulary=vocab.txt"], "vocab.txt"))


def _weights(key: str, make: Callable[[Ctx], str]) -> Callable[[Ctx, list[str]], list[str]]:
    return lambda ctx, ids: [f"{key}={make(ctx)}"]


def _copy_truncated(source: str, name: str) -> Callable[[Ctx], str]:
    def make(ctx: Ctx) -> str:
        shutil.copy(source, ctx.p(name))
        truncate(ctx.p(name), 0.5)
        return name

    return make


def _garbage_file(name: str, data: bytes = b"not weights\n") -> Callable[[Ctx], str]:
    return lambda ctx: os.path.basename(garbage(ctx.p(name), data))


def _folder(name: str) -> Callable[[Ctx], str]:
    return lambda ctx: os.makedirs(ctx.p(name)) or name


def _fixture(attr: str, *keys: str) -> Callable[[Ctx], str]:
    def get(ctx: Ctx) -> str:
        value = getattr(ctx.fx, attr)
        for k in keys:
            value = value[k]
        return value

    return get


for _key, _what in (("model.clip.pretrained", "clip"), ("model.checkpoint", "heads")):
    _src = "clip" if _what == "clip" else "heads"
    add("eval", f"{_key} missing", "error", _eval_file(_weights(_key, lambda c: "missing.pt"), "missing.pt"))
    add("eval", f"{_key} garbage", "error", _eval_file(_weights(_key, _garbage_file("bad.pt")), "bad.pt"))
    add("eval", f"{_key} truncated", "error",
        _eval_file(lambda c, ids, k=_key, s=_src: [f"{k}={_copy_truncated(getattr(c.fx, s), 'cut.pt')(c)}"], "cut.pt"))
    add("eval", f"{_key} is a folder", "error", _eval_file(_weights(_key, _folder("w.pt")), "w.pt"))
add("eval", "model.checkpoint is DINO's weights", "error",
    _eval_file(lambda c, ids: [f"model.checkpoint={c.fx.teacher['dino']}"], "dino.pth"))
add("eval", "model.clip.pretrained is the heads file", "error",
    _eval_file(lambda c, ids: [f"model.clip.pretrained={c.fx.heads}"], "heads.pt"))
add("eval", "model.clip.name JSON missing", "error",
    _eval_file(lambda c, ids: ["model.clip.name=nothing.json"], "nothing.json"))
add("eval", "model.clip.name JSON garbage", "error",
    _eval_file(lambda c, ids: [f"model.clip.name={garbage(c.p('bad.json'), b'{not json')}"], "bad.json"))
add("eval", "model.clip.name JSON not UTF-8", "error",
    _eval_file(lambda c, ids: [f"model.clip.name={garbage(c.p('bad.json'), NON_UTF8_JSON)}"], "bad.json"))
add("eval", "model=target with a heads file", "error",
    _eval_file(lambda c, ids: ["model=target", f"model.checkpoint={c.fx.heads}"], "heads.pt"))


# ---------------------------------------------------------------- eval: valid but odd inputs


def _eval_scored(sizes: Sequence[tuple[int, int]], label_16bit: bool = False) -> Callable[[Ctx], Outcome]:
    def run(ctx: Ctx) -> Outcome:
        ids = write_voc(ctx.p("voc"), sizes, border=False)
        if label_16bit:
            for i in ids:
                path = ctx.p("voc", "SegmentationClass", f"{i}.png")
                save_16bit(path, np.asarray(Image.open(path)))
        r, _ = ctx.tool("eval.py", *ctx.fx.eval_args(), "save_predictions=true")
        return ctx.success(r, lambda: miou_problem(ctx.p("out"), ctx.p("voc"), ids))

    return run


add("eval", "thin images 1xN", "exit 0, numpy mIoU", _eval_scored([(1, 80), (1, 17)]))
add("eval", "thin images Nx1", "exit 0, numpy mIoU", _eval_scored([(80, 1), (23, 1)]))
add("eval", "thin images 1x1", "exit 0, numpy mIoU", _eval_scored([(1, 1), (1, 1)]))
add("eval", "thin mixed with normal", "exit 0, numpy mIoU", _eval_scored([(1, 80), (60, 80), (9, 1)]))
add("eval", "16-bit labels with values <= 255", "exit 0, numpy mIoU", _eval_scored([(40, 56), (30, 20)], True))


# ---------------------------------------------------------------- eval: run folders


@case("eval", "rerun into existing output", "refused, unchanged")
def _(ctx: Ctx) -> Outcome:
    shutil.copytree(ctx.fx.eval_run(), ctx.p("out"))
    write_voc(ctx.p("voc"))
    r, created = ctx.tool("eval.py", *ctx.fx.eval_args())
    return ctx.error(r, "results.json", created=created)


@case("eval", "output holding only a config.yaml", "refused, unchanged")
def _(ctx: Ctx) -> Outcome:
    os.makedirs(ctx.p("out"))
    with open(ctx.p("out", "config.yaml"), "w") as f:
        f.write("# my notes\nmodel: {gamma: 0.3}\n")
    write_voc(ctx.p("voc"))
    r, created = ctx.tool("eval.py", *ctx.fx.eval_args())
    return ctx.error(r, "config.yaml", created=created)


@case("eval", "output is a file", "error")
def _(ctx: Ctx) -> Outcome:
    garbage(ctx.p("out"), b"my file\n")
    write_voc(ctx.p("voc"))
    r, created = ctx.tool("eval.py", *ctx.fx.eval_args())
    return ctx.error(r, "output", created=created)


@case("eval", "sweep rerun: a setting's folder exists", "refused, unchanged")
def _(ctx: Ctx) -> Outcome:
    write_voc(ctx.p("voc"))
    sweep = "sweep={model.gamma:[0.1,0.3]}"
    first, _ = ctx.tool("eval.py", *ctx.fx.eval_args(), sweep, allowed=["out/*"])
    if first.rc != 0:
        return ctx.success(first)
    points = sorted(d for d in os.listdir(ctx.p("out")) if os.path.isdir(ctx.p("out", d)))
    if len(points) != 2:
        return Outcome(WRONG, f"a sweep of 2 settings wrote folders {points}")
    for name in os.listdir(ctx.p("out")):  # the summary gone: only the settings' folders remain
        if os.path.isfile(ctx.p("out", name)):
            os.remove(ctx.p("out", name))
    r, created = ctx.tool("eval.py", *ctx.fx.eval_args(), sweep)
    return ctx.error(r, points[0], created=created)


@case("eval", "model=target with a target run", "exit 0")
def _(ctx: Ctx) -> Outcome:
    ids = write_voc(ctx.p("voc"), border=False)
    run = ctx.fx.copy_run(ctx, ctx.fx.target_run())
    r, _ = ctx.tool("eval.py", *ctx.fx.eval_args(), "model=target", f"model.checkpoint={run}/last.pt",
                    "save_predictions=true")
    return ctx.success(r, lambda: miou_problem(ctx.p("out"), ctx.p("voc"), ids))


@case("eval", "two concurrent evaluations into one new output", "one exit 0, one exit 2")
def _(ctx: Ctx) -> Outcome:
    ids = write_voc(ctx.p("voc"), [(60, 80)] * 6, border=False)
    before = ctx.snap()
    procs = [ctx.popen("eval.py", *ctx.fx.eval_args(), "save_predictions=true") for _ in range(2)]
    done = [ctx.finish(p, 400) for p in procs]
    ctx.compare(before, allowed=["out/*", "out/*/*", "out/*/*/*"])
    return _one_winner(ctx, done, "output", lambda: miou_problem(ctx.p("out"), ctx.p("voc"), ids))


def _one_winner(ctx: Ctx, done: list[Proc], key: str, check: Callable[[], str | None]) -> Outcome:
    codes = sorted(p.rc for p in done)
    tb = [p for p in done if "Traceback" in p.err]
    if tb:
        return Outcome(TRACEBACK, tb[0].last, f"exit codes {codes}")
    if codes != [0, 2]:
        return Outcome(WRONG if 0 in codes else TRACEBACK, f"exit codes {codes}, expected [0, 2]",
                       " | ".join(p.last for p in done))
    loser = next(p for p in done if p.rc == 2)
    verdict = ctx.error(loser, key)
    if verdict.klass != OK:
        return verdict
    problem = check()
    return Outcome(WRONG, problem, loser.last) if problem else Outcome(OK, loser.last)


def _eval_signal(signum: int) -> Callable[[Ctx], Outcome]:
    def run(ctx: Ctx) -> Outcome:
        write_voc(ctx.p("voc"), [(300, 400)] * 40)
        args = [a for a in ctx.fx.eval_args() if not a.startswith("slide.scale")] + ["slide.scale=[2048,448]"]
        before = ctx.snap()
        proc = ctx.popen("eval.py", *args)
        deadline = time.time() + 120
        while not os.path.isdir(ctx.p("out")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(6)  # the model built, windows under way
        if proc.poll() is None:
            proc.send_signal(signum)
        r = ctx.finish(proc, 120)
        created = ctx.compare(before)
        one_line = [ln for ln in r.err.splitlines() if ln.strip() and "interrupted" in ln.lower()]
        return ctx.interrupted(r, signum, lambda: (f"left behind: {', '.join(created)}" if created else None)
                               or (None if len(one_line) == 1 else f"{len(one_line)} 'interrupted' lines"))

    return run


add("eval", "SIGINT during the evaluation", "exit 130, nothing left", _eval_signal(signal.SIGINT))
add("eval", "SIGTERM during the evaluation", "exit 143, nothing left", _eval_signal(signal.SIGTERM))


# ---------------------------------------------------------------- demo: settings and files

DEMO_SETTINGS = [
    ("alpha=2", "alpha"), ("alpha=nan", "alpha"), ("alpha=-0.1", "alpha"), ("query=[-1,0]", "query"),
    ("query=[1]", "query"), ("query=[1000,5]", "query"), ("query=[nan,3]", "query"), ("model.gamma=nan", "model.gamma"),
    ("model.delta=inf", "model.delta"), ("slide.stride=[0,0]", "slide.stride"),
    ("slide.window_batch=-1", "slide.window_batch"),
    ("prompts=[]", "prompt"), ("prompts=[cat,cat]", "cat"), ('prompts=[""]', "empty"), ("prompts=null", "prompts"),
    ("precision=fp8", "precision"), ("device=tpu", "device"),
    ("alhpa=0.3", "alpha"), ("model.maskclip.temperature=0", "model.maskclip.temperature"),
    ("figure=maybe", "figure"), ("overwrite=2", "overwrite"),
]


def _demo(extra: Sequence[str], *names: str, prepare: Callable[[Ctx], None] | None = None,
          env: dict[str, str] | None = None, image: str = "photo.png") -> Callable[[Ctx], Outcome]:
    def run(ctx: Ctx) -> Outcome:
        save_image(ctx.p("photo.png"), 40, 56)
        if prepare:
            prepare(ctx)
        r, created = ctx.tool("demo.py", *ctx.fx.demo_args(image), *extra, env=env)
        return ctx.error(r, *names, created=created)

    return run


for _setting, _name in DEMO_SETTINGS:
    add("demo", _setting, "error", _demo([_setting], _name))

add("demo", "prompts_file missing", "error", _demo(["prompts=null", "prompts_file=nothing.txt"], "nothing.txt"))
add("demo", "prompts and prompts_file", "error",
    _demo(["prompts_file=cls.txt"], "prompts_file", prepare=lambda c: garbage(c.p("cls.txt"), b"cat\n") and None))
add("demo", "prompts_file not UTF-8", "error",
    _demo(["prompts=null", "prompts_file=cls.txt"], "cls.txt", prepare=lambda c: garbage(c.p("cls.txt"), NON_UTF8)
          and None))
add("demo", "prompts_file is a folder", "error",
    _demo(["prompts=null", "prompts_file=cls.txt"], "cls.txt", prepare=lambda c: os.makedirs(c.p("cls.txt"))))
add("demo", "prompts_file empty", "error",
    _demo(["prompts=null", "prompts_file=cls.txt"], "cls.txt", prepare=lambda c: garbage(c.p("cls.txt"), b"") and None))
add("demo", "prompts_file 300 classes", "error",
    _demo(["prompts=null", "prompts_file=cls.txt"], "300",
          prepare=lambda c: garbage(c.p("cls.txt"), "\n".join(f"class {i}" for i in range(300)).encode()) and None))
add("demo", "image missing", "error", _demo([], "nothing.png", image="nothing.png"))
add("demo", "image garbage", "error", _demo([], "bad.png", image="bad.png",
                                            prepare=lambda c: garbage(c.p("bad.png")) and None))
add("demo", "image empty file", "error", _demo([], "bad.png", image="bad.png",
                                               prepare=lambda c: garbage(c.p("bad.png"), b"") and None))
add("demo", "image truncated", "error",
    _demo([], "cut.jpg", image="cut.jpg",
          prepare=lambda c: (Image.fromarray(random_image(200, 300)).save(c.p("cut.jpg")), truncate(c.p("cut.jpg")))
          and None))
add("demo", "image decompression bomb", "error",
    _demo([], "big.png", image="big.png", env=BOMB_ENV,
          prepare=lambda c: save_image(c.p("big.png"), 100, 100) and None))
add("demo", "empty image folder", "error",
    _demo([], "empty", image="empty", prepare=lambda c: os.makedirs(c.p("empty"))))
add("demo", "glob matching nothing", "error", _demo([], "*.webp", image="*.webp"))
add("demo", "query with a folder", "error",
    _demo(["query=[1,1]"], "query", image="many", prepare=lambda c: save_image(c.p("many", "a.png")) and None))
add("demo", "output is a file", "error", _demo([], "output", prepare=lambda c: garbage(c.p("out")) and None))
add("demo", "model.checkpoint garbage", "error", _demo(["model.checkpoint=bad.pt"], "bad.pt",
                                                       prepare=lambda c: garbage(c.p("bad.pt")) and None))
add("demo", "model.clip.pretrained truncated", "error",
    _demo(["model.clip.pretrained=cut.pt"], "cut.pt",
          prepare=lambda c: _copy_truncated(c.fx.clip, "cut.pt")(c) and None))


@case("demo", "rerun into existing outputs", "refused, unchanged")
def _(ctx: Ctx) -> Outcome:
    save_image(ctx.p("photo.png"), 40, 56)
    first, _ = ctx.tool("demo.py", *ctx.fx.demo_args())
    if first.rc != 0:
        return ctx.success(first)
    r, created = ctx.tool("demo.py", *ctx.fx.demo_args(), "prompts=[cat,sofa]")
    return ctx.error(r, "photo_", created=created)


def _demo_ok(h: int, w: int, mode: str = "RGB", name: str = "photo.png") -> Callable[[Ctx], Outcome]:
    def run(ctx: Ctx) -> Outcome:
        array = random_image(h, w)
        if mode == "I;16":
            Image.fromarray(array[..., 0].astype(np.uint16) * 257).save(ctx.p(name))
        elif mode == "RGBA":
            Image.fromarray(np.dstack([array, np.full((h, w), 128, np.uint8)])).save(ctx.p(name))
        elif mode == "P":
            Image.fromarray(array).convert("P").save(ctx.p(name))
        elif mode == "CMYK":
            Image.fromarray(array).convert("CMYK").save(ctx.p(name))
        else:
            Image.fromarray(array).save(ctx.p(name))
        r, _ = ctx.tool("demo.py", *ctx.fx.demo_args(name))
        return ctx.success(r, lambda: demo_problem(ctx, os.path.splitext(name)[0], (h, w)))

    return run


add("demo", "image 1x1", "exit 0, 1x1 labels", _demo_ok(1, 1))
add("demo", "image 1xN", "exit 0, 1xN labels", _demo_ok(1, 90))
add("demo", "image Nx1", "exit 0, Nx1 labels", _demo_ok(90, 1))
add("demo", "image 16-bit grayscale", "exit 0", _demo_ok(30, 40, "I;16"))
add("demo", "image RGBA", "exit 0", _demo_ok(30, 40, "RGBA"))
add("demo", "image palette", "exit 0", _demo_ok(30, 40, "P"))
add("demo", "image CMYK JPEG", "exit 0", _demo_ok(30, 40, "CMYK", "photo.jpg"))


@case("demo", "folder with a decompression bomb", "exit 0, bomb skipped and counted")
def _(ctx: Ctx) -> Outcome:
    save_image(ctx.p("many", "a_small.png"), 20, 30)
    save_image(ctx.p("many", "b_big.png"), 100, 100)
    garbage(ctx.p("many", "c_broken.jpg"))
    r, _ = ctx.tool("demo.py", *ctx.fx.demo_args("many"), env=BOMB_ENV)

    def check() -> str | None:
        last = r.last_any  # the demo logs on stdout
        if "skipped 2" not in last or "b_big.png" not in last or "c_broken.jpg" not in last:
            return f"the last line does not count the 2 skipped files: {last}"
        if any(n.startswith(("b_big", "c_broken")) for n in os.listdir(ctx.p("out"))):
            return "outputs written for a skipped image"
        return demo_problem(ctx, "a_small", (20, 30))

    return ctx.success(r, check)


def _text_cache(corrupt: Callable[[str], None]) -> Callable[[Ctx], Outcome]:
    """Fill a text cache, corrupt every entry, run again: recomputed, same labels."""

    def run(ctx: Ctx) -> Outcome:
        save_image(ctx.p("photo.png"), 40, 56)
        env = {"XDG_CACHE_HOME": ctx.p("cache")}
        first, _ = ctx.tool("demo.py", *ctx.fx.demo_args(output="out1"), env=env)
        if first.rc != 0:
            return ctx.success(first)
        folder = ctx.p("cache", "clip_dinoiser", "text")
        entries = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        if not entries:
            return Outcome(WRONG, "no text-cache entries written", first.last)
        for name in entries:
            corrupt(os.path.join(folder, name))
        r, _ = ctx.tool("demo.py", *ctx.fx.demo_args(output="out2"), env=env, allowed=["cache/*"])

        def check() -> str | None:
            a = np.asarray(Image.open(ctx.p("out1", "photo_labels.png")))
            b = np.asarray(Image.open(ctx.p("out2", "photo_labels.png")))
            return None if np.array_equal(a, b) else "labels differ from the run with a sound cache"

        return ctx.success(r, check)

    return run


def _entry_of_shape(path: str) -> None:
    import torch

    torch.save({"embedding": torch.zeros(5), "name": "x"}, path)


def _entry_2d(path: str) -> None:
    import torch

    torch.save({"embedding": torch.zeros(2, 32), "name": "x"}, path)


def _entry_nan(path: str) -> None:
    import torch

    torch.save({"embedding": torch.full((32,), float("nan")), "name": "x"}, path)


def _entry_not_a_dict(path: str) -> None:
    import torch

    torch.save(torch.zeros(32), path)


add("demo", "text cache: entries of the wrong shape", "exit 0, recomputed", _text_cache(_entry_of_shape))
add("demo", "text cache: 2-D entries", "exit 0, recomputed", _text_cache(_entry_2d))
add("demo", "text cache: NaN entries", "exit 0, recomputed", _text_cache(_entry_nan))
add("demo", "text cache: entries not a mapping", "exit 0, recomputed", _text_cache(_entry_not_a_dict))
add("demo", "text cache: garbage entries", "exit 0, recomputed", _text_cache(lambda p: garbage(p) and None))
add("demo", "text cache: truncated entries", "exit 0, recomputed", _text_cache(lambda p: truncate(p) and None))
add("demo", "text cache: entries are folders", "exit 0, recomputed",
    _text_cache(lambda p: (os.remove(p), os.makedirs(p)) and None))


# ---------------------------------------------------------------- app: bad configurations must not serve

APP_SETTINGS = [
    ("port=0", "port"), ("port=70000", "port"), ("port=nan", "port"), ("port=-1", "port"), ("alpha=2", "alpha"),
    ("alpha=nan", "alpha"), ("slide.stride=[0,0]", "slide.stride"), ("precision=fp8", "precision"),
    ("device=tpu", "device"), ("prt=8080", "port"), ("model.gamma=nan", "model.gamma"),
    ("examples=[missing.jpg]", "missing.jpg"), ("model.maskclip.temperature=0", "model.maskclip.temperature"),
]


def _app(extra: Sequence[str], *names: str, prepare: Callable[[Ctx], list[str] | None] | None = None,
         port: int | None = None) -> Callable[[Ctx], Outcome]:
    def run(ctx: Ctx) -> Outcome:
        more = (prepare(ctx) if prepare else None) or []
        args = [a for a in ctx.fx.app_args(port) if not any(a.startswith(e.split("=")[0] + "=") for e in extra)]
        r, created = ctx.tool("app.py", *args, *extra, *more, timeout=90)
        return ctx.error(r, *names, created=created)

    return run


for _setting, _name in APP_SETTINGS:
    add("app", _setting, "error before serving", _app([_setting], _name))
add("app", "examples=[garbage.jpg]", "error before serving",
    _app(["examples=[bad.jpg]"], "bad.jpg", prepare=lambda c: garbage(c.p("bad.jpg")) and None))
add("app", "examples=[a folder]", "error before serving",
    _app(["examples=[pics]"], "pics", prepare=lambda c: os.makedirs(c.p("pics"))))
add("app", "model.checkpoint garbage", "error before serving",
    _app(["model.checkpoint=bad.pt"], "bad.pt", prepare=lambda c: garbage(c.p("bad.pt")) and None))


@case("app", "port already in use", "error, one line")
def _(ctx: Ctx) -> Outcome:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r, created = ctx.tool("app.py", *ctx.fx.app_args(port), timeout=120)
    return ctx.error(r, str(port), created=created)


@case("app", "SIGTERM to a serving app", "exit 143, one line")
def _(ctx: Ctx) -> Outcome:
    proc = ctx.popen("app.py", *ctx.fx.app_args())
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "ready:" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ready.wait(180)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader.join(10)
    r = Proc(proc.cmd_list, proc.returncode, proc.stdout.read() if proc.stdout else "", "".join(lines))
    ctx.procs.append(r)
    if not ready.is_set():
        return Outcome(TRACEBACK, r.last or "never served", f"exit {r.rc}")
    return ctx.interrupted(r, signal.SIGTERM)


# ---------------------------------------------------------------- app: the page's handlers (in this process)


def _handler(call: Callable[[Any, Any, Ctx], Any], *names: str, ok: Callable[[Any], str | None] | None = None,
             env: dict[str, str] | None = None) -> Callable[[Ctx], Outcome]:
    """``call(module, segmenter, ctx)``: a ``gr.Error`` naming ``names`` expected (or, with ``ok``,
    a result that ``ok`` accepts)."""

    def run(ctx: Ctx) -> Outcome:
        module, segmenter = ctx.fx.app_module()
        import gradio as gr

        before = ctx.snap()
        with _environ(env), contextlib.redirect_stderr(io.StringIO()):  # the app's "[app] ..." lines
            try:
                result = call(module, segmenter, ctx)
            except gr.Error as e:
                ctx.compare(before)
                message = str(getattr(e, "message", e))
                if ok is not None:
                    return Outcome(TRACEBACK, message, "gr.Error for a valid input")
                missing = [n for n in names if n.lower() not in message.lower()]
                if "\n" in message.strip() or missing:
                    return Outcome(UNCLEAR, message, f"does not name {', '.join(missing)}" if missing else "")
                if ctx.dir in message or ctx.fx.base in message:
                    return Outcome(UNCLEAR, message, "shows the server's folder")
                return Outcome(OK, message)
            except Exception as e:
                ctx.compare(before)
                return Outcome(TRACEBACK, f"{type(e).__name__}: {e}".splitlines()[0], traceback_tail())
        ctx.compare(before, allowed=["downloads/*"])
        if ok is None:
            return Outcome(WRONG, "no error for a bad upload")
        problem = ok(result)
        return Outcome(WRONG, problem) if problem else Outcome(OK, "answered")

    return run


@contextlib.contextmanager
def _environ(extra: dict[str, str] | None):
    saved = {k: os.environ.get(k) for k in (extra or {})}
    os.environ.update(extra or {})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _segment(path_of: Callable[[Ctx], str | None], prompts: str = "cat, dog, background"):
    def call(module, segmenter, ctx: Ctx):
        os.makedirs(ctx.p("downloads"), exist_ok=True)
        return segmenter.segment(path_of(ctx), prompts, True, True, ctx.p("downloads"))

    return call


def _photo(ctx: Ctx, h: int = 40, w: int = 56) -> str:
    return save_image(ctx.p("upload.png"), h, w)


add("app-handler", "upload missing", "gr.Error naming it",
    _handler(_segment(lambda c: c.p("gone.png")), "gone.png"))
add("app-handler", "upload is a folder", "gr.Error naming it",
    _handler(_segment(lambda c: os.makedirs(c.p("pics")) or c.p("pics")), "pics"))
add("app-handler", "upload garbage", "gr.Error naming it",
    _handler(_segment(lambda c: garbage(c.p("bad.png"))), "bad.png"))
add("app-handler", "upload truncated", "gr.Error naming it",
    _handler(_segment(lambda c: truncate(save_image(c.p("cut.png"), 200, 300))), "cut.png"))
add("app-handler", "upload decompression bomb", "gr.Error naming it",
    _handler(_segment(lambda c: save_image(c.p("big.png"), 100, 100)), "big.png", env=BOMB_ENV))
add("app-handler", "no upload", "gr.Error", _handler(_segment(lambda c: None), "upload"))
add("app-handler", "empty class list", "gr.Error", _handler(_segment(_photo, " , ,"), "class"))
add("app-handler", "300 classes", "gr.Error", _handler(_segment(_photo, ",".join(f"c{i}" for i in range(300))), "256"))
add("app-handler", "a class twice", "gr.Error", _handler(_segment(_photo, "cat, dog, Cat"), "cat"))
add("app-handler", "upload 1x1", "answered",
    _handler(_segment(lambda c: _photo(c, 1, 1)), ok=lambda r: None if r[0].data.labels.shape == (1, 1)
             else f"labels {r[0].data.labels.shape}"))
add("app-handler", "upload 1xN", "answered",
    _handler(_segment(lambda c: _photo(c, 1, 70)), ok=lambda r: None if r[0].data.labels.shape == (1, 70)
             else f"labels {r[0].data.labels.shape}"))
add("app-handler", "click before Segment", "gr.Error", _handler(lambda m, s, c: s.click(None, [1, 1]), "Segment"))


def _click_outside(module, segmenter, ctx: Ctx):
    result = _segment(_photo)(module, segmenter, ctx)
    return segmenter.click(result[0], [500, 3])


add("app-handler", "click outside the image", "gr.Error", _handler(_click_outside, "inside"))
add("app-handler", "preview of a garbage upload", "gr.Error naming it",
    _handler(lambda m, s, c: m.show_upload(garbage(c.p("bad.png"))), "bad.png"))


# ---------------------------------------------------------------- train: settings

TRAIN_SETTINGS = [
    ("train.corr_lr=nan", "train.corr_lr"), ("train.found_lr=inf", "train.found_lr"),
    ("train.corr_lr=0", "train.corr_lr"),
    ("train.step_lr_gamma=-1", "train.step_lr_gamma"), ("train.milestones=[-1]", "train.milestones"),
    ("train.milestones=[nan]", "train.milestones"), ("train.im_size=8", "train.im_size"),
    ("train.batch_size=0", "train.batch_size"), ("train.epochs=-1", "train.epochs"),
    ("train.ds_size=0", "train.ds_size"),
    ("train.seed=-1", "train.seed"), ("train.save_every=0", "train.save_every"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"), ("train.stop_after=0", "train.stop_after"),
    ("train.num_workers=-2", "train.num_workers"), ("model.gamma=nan", "model.gamma"),
    ("model.delta=-5", "model.delta"), ("model.proj_dim=-16", "model.proj_dim"), ("eval.limit=0", "eval.limit"),
    ("eval.slide.stride=[0,0]", "eval.slide.stride"),
    ("eval.num_workers=-1", "eval.num_workers"), ("train.lr=0.1", "corr_lr"), ("precision=fp8", "precision"),
    ("device=tpu", "device"), ("train.batch_size=abc", "train.batch_size"), ("teachers.dino.type=bogus", "bogus"),
    ("teachers.found.antialias=maybe", "teachers.found.antialias"), ("train.epochs=1e9", "train.epochs"),
    ("train.milestones=[inf]", "train.milestones"),
]


def _source(ctx: Ctx, what: str) -> str:
    return {"heads": ctx.fx.heads, "decoder": ctx.fx.decoder}.get(what) or ctx.fx.teacher[what]


def _train(extra: Sequence[str], *names: str, prepare: Callable[[Ctx], list[str] | None] | None = None,
           data: str | None = None, env: dict[str, str] | None = None) -> Callable[[Ctx], Outcome]:
    def run(ctx: Ctx) -> Outcome:
        more = (prepare(ctx) if prepare else None) or []
        r, created = ctx.tool("train.py", *ctx.fx.train_args(data), *extra, *more, env=env)
        return ctx.error(r, *names, created=created)

    return run


for _setting, _name in TRAIN_SETTINGS:
    add("train", _setting, "error", _train([_setting], _name))

add("train", "eval.enabled with a missing benchmark", "error",
    _train(["eval.enabled=true", "eval.data.root=nowhere"], "nowhere"))
for _key, _src in (("teachers.found.decoder", "decoder"), ("teachers.dino.pretrained", "dino"),
                   ("teachers.found.pretrained", "found"), ("train.init", "heads")):
    add("train", f"{_key} missing", "error", _train([f"{_key}=missing.pt"], "missing.pt"))
    add("train", f"{_key} garbage", "error", _train([], "bad.pt", prepare=lambda c, k=_key: [
        f"{k}={garbage(c.p('bad.pt'))}"]))
    add("train", f"{_key} truncated", "error", _train([], "cut.pt", prepare=lambda c, k=_key, s=_src: [
        f"{k}={_copy_truncated(_source(c, s), 'cut.pt')(c)}"]))
    add("train", f"{_key} is a folder", "error", _train([], "w.pt", prepare=lambda c, k=_key: [
        f"{k}={_folder('w.pt')(c)}"]))
add("train", "teachers.found.decoder is the heads file", "error",
    _train([], "heads.pt", prepare=lambda c: [f"teachers.found.decoder={c.fx.heads}"]))
add("train", "train.init is DINO's weights", "error",
    _train([], "dino.pth", prepare=lambda c: [f"train.init={c.fx.teacher['dino']}"]))
add("train", "model.clip.pretrained garbage", "error",
    _train([], "bad.pt", prepare=lambda c: [f"model.clip.pretrained={garbage(c.p('bad.pt'))}"]))
add("train", "train.data missing", "error", _train([], "nowhere", data="nowhere"))
add("train", "train.data is a file", "error", _train([], "file.png", data="file.png",
                                                     prepare=lambda c: save_image(c.p("file.png")) and None))
add("train", "train.data without images", "error", _train([], "empty", data="empty",
                                                          prepare=lambda c: os.makedirs(c.p("empty"))))
add("train", "train.data with a garbage image", "error",
    _train([], "broken.jpg", data="imgs",
           prepare=lambda c: (write_images(c.p("imgs"), 4), garbage(c.p("imgs", "broken.jpg"))) and None))
add("train", "train.data with a decompression bomb", "error",
    _train(["train.ds_size=null"], "big.png", data="imgs", env=BOMB_ENV,
           prepare=lambda c: (write_images(c.p("imgs"), 4, (20, 30)), save_image(c.p("imgs", "big.png"), 100, 100))
           and None))
add("train", "train.data with a truncated image (header readable)", "error",
    _train(["train.ds_size=null"], "cut.png", data="imgs",
           prepare=lambda c: (write_images(c.p("imgs"), 3), truncate(save_image(c.p("imgs", "cut.png"), 200, 300), 0.4))
           and None))
add("train", "train.output is a file", "error", _train([], "train.output",
                                                       prepare=lambda c: garbage(c.p("run")) and None))


def _train_ok(prepare: Callable[[Ctx], list[str]], check: Callable[[Ctx, Proc], str | None],
              env: dict[str, str] | None = None) -> Callable[[Ctx], Outcome]:
    def run(ctx: Ctx) -> Outcome:
        more = prepare(ctx)
        r, _ = ctx.tool("train.py", *ctx.fx.train_args("imgs"), *more, env=env)
        return ctx.success(r, lambda: check(ctx, r))

    return run


def _iterations(expected: int) -> Callable[[Ctx, Proc], str | None]:
    def check(ctx: Ctx, r: Proc) -> str | None:
        lines = open(ctx.p("run", "metrics.jsonl")).read().splitlines()
        if len(lines) != expected:
            return f"{len(lines)} iterations, expected {expected}"
        return None if os.path.isfile(ctx.p("run", "last.pt")) else "no last.pt"

    return check


def _loop_folder(ctx: Ctx) -> list[str]:
    write_images(ctx.p("imgs"), 4, nested=False)
    os.symlink("..", ctx.p("imgs", "loop"))
    os.symlink(".", ctx.p("imgs", "self"))
    return ["train.ds_size=null", "train.epochs=1"]


add("train", "symlink loops in the image folder", "exit 0, 2 iterations (4 images)",
    _train_ok(_loop_folder, _iterations(2)))
add("train", "bad images skipped (train.skip_bad_images)", "exit 0, 2 iterations",
    _train_ok(lambda c: (write_images(c.p("imgs"), 4, (20, 30)), save_image(c.p("imgs", "big.png"), 100, 100),
                         garbage(c.p("imgs", "broken.jpg"))) and ["train.skip_bad_images=true", "train.ds_size=null",
                                                                   "train.epochs=1"],
              _iterations(2), env=BOMB_ENV))
add("train", "thin training images (1xN, Nx1)", "exit 0",
    _train_ok(lambda c: (save_image(c.p("imgs", "a.png"), 1, 90), save_image(c.p("imgs", "b.png"), 90, 1),
                         save_image(c.p("imgs", "c.png"), 1, 1), save_image(c.p("imgs", "d.png"), 50, 60)) and
              ["train.ds_size=null", "train.epochs=1"], _iterations(2)))


# ---------------------------------------------------------------- train: run folders, resume, signals


@case("train", "new run into an existing run", "refused, unchanged")
def _(ctx: Ctx) -> Outcome:
    run = ctx.fx.copy_run(ctx, ctx.fx.train_run())
    r, created = ctx.tool("train.py", *ctx.fx.train_args(output=run), "train.seed=5")
    return ctx.error(r, "train.output", created=created)


@case("train", "train.output holding only a config.yaml", "refused, unchanged")
def _(ctx: Ctx) -> Outcome:
    os.makedirs(ctx.p("run"))
    garbage(ctx.p("run", "config.yaml"), b"# my settings\ntrain: {epochs: 3}\n")
    r, created = ctx.tool("train.py", *ctx.fx.train_args(output="run"))
    return ctx.error(r, "config.yaml", created=created)


def _resume(change: Callable[[Ctx, str], list[str] | None], *names: str, source: str = "train",
            allowed: Sequence[str] = ()) -> Callable[[Ctx], Outcome]:
    def run(ctx: Ctx) -> Outcome:
        run_dir = ctx.fx.copy_run(ctx, ctx.fx.train_run() if source == "train" else ctx.fx.stopped_run())
        more = change(ctx, run_dir) or []
        r, created = ctx.tool("train.py", f"train.resume={run_dir}", *more, allowed=allowed)
        return ctx.error(r, *names, created=created)

    return run


add("train", "resume of a missing folder", "error", _resume(lambda c, r: ["train.resume=nowhere"], "nowhere"))
add("train", "resume without config.yaml", "error",
    _resume(lambda c, r: os.remove(c.p(r, "config.yaml")), "config.yaml"))
add("train", "resume: config.yaml garbage YAML", "error",
    _resume(lambda c, r: garbage(c.p(r, "config.yaml"), b"train: [unclosed\n  - : :\n") and None, "config.yaml"))
add("train", "resume: config.yaml not UTF-8", "error",
    _resume(lambda c, r: garbage(c.p(r, "config.yaml"), b"train:\n  epochs: 3 \xff\n") and None, "config.yaml"))
add("train", "resume: config.yaml empty", "error",
    _resume(lambda c, r: garbage(c.p(r, "config.yaml"), b"") and None, "config.yaml"))
add("train", "resume: config.yaml a list", "error",
    _resume(lambda c, r: garbage(c.p(r, "config.yaml"), b"- a\n- b\n") and None, "config.yaml"))
add("train", "resume: config.yaml with train.corr_lr .nan", "error",
    _resume(lambda c, r: _edit_yaml(c.p(r, "config.yaml"), "corr_lr:", "  corr_lr: .nan"), "train.corr_lr",
            source="stopped"))
add("train", "resume: config.yaml is a folder", "error",
    _resume(lambda c, r: _replace_with_folder(c.p(r, "config.yaml")), "config.yaml"))
add("train", "resume with changed settings", "error",
    _resume(lambda c, r: ["train.batch_size=1", "model.gamma=0.3"], "train.batch_size", "model.gamma",
            source="stopped"))
add("train", "resume with train.epochs below the checkpoint", "error",
    _resume(lambda c, r: ["train.epochs=1"], "train.epochs"))
add("train", "resume of a finished run", "error", _resume(lambda c, r: [], "train.epochs"))
add("train", "resume with train.epochs=nan", "error", _resume(lambda c, r: ["train.epochs=nan"], "train.epochs"))
add("train", "resume: every checkpoint garbage", "error",
    _resume(lambda c, r: _spoil_checkpoints(c.p(r)), "checkpoints", source="stopped"))
add("train", "resume: no checkpoint", "error",
    _resume(lambda c, r: shutil.rmtree(c.p(r, "checkpoints")), "checkpoint", source="stopped"))
add("train", "resume: a checkpoint of another shape", "error",
    _resume(lambda c, r: shutil.copy(c.fx.heads, c.p(r, "checkpoints", "iter_0000002.pt")) and None, "checkpoints",
            source="stopped"))


def _spoil_checkpoints(run: str) -> None:
    for name in os.listdir(os.path.join(run, "checkpoints")):
        garbage(os.path.join(run, "checkpoints", name))


def _edit_yaml(path: str, starts: str, replacement: str) -> None:
    lines = open(path).read().splitlines()
    lines = [replacement if ln.strip().startswith(starts) else ln for ln in lines]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


@case("train", "resume: newest checkpoint truncated", "exit 0, falls back")
def _(ctx: Ctx) -> Outcome:
    run = ctx.fx.copy_run(ctx, ctx.fx.stopped_run())
    write_images(ctx.p("more"), 1)
    shutil.copy(ctx.p(run, "checkpoints", "iter_0000002.pt"), ctx.p(run, "checkpoints", "iter_0000003.pt"))
    truncate(ctx.p(run, "checkpoints", "iter_0000003.pt"))
    r, _ = ctx.tool("train.py", f"train.resume={run}", allowed=[f"{run}/checkpoints/*", f"{run}/last.pt"])
    return ctx.success(r, lambda: _iterations(6)(ctx, r))


@case("train", "stop_after=3 with save_every=2, then resume", "iteration 3 saved; resume exit 0")
def _(ctx: Ctx) -> Outcome:
    first, _ = ctx.tool("train.py", *ctx.fx.train_args(output="run"), "train.stop_after=3")
    verdict = ctx.success(first, lambda: None if 3 in checkpoints(ctx.p("run")) else
                          f"checkpoints {checkpoints(ctx.p('run'))}: iteration 3 not saved")
    if verdict.klass != OK:
        return verdict
    r, _ = ctx.tool("train.py", "train.resume=run", allowed=["run/checkpoints/*", "run/last.pt"])
    return ctx.success(r, lambda: _iterations(6)(ctx, r))


def _train_signal(signum: int) -> Callable[[Ctx], Outcome]:
    def run(ctx: Ctx) -> Outcome:
        before = ctx.snap()
        proc = ctx.popen("train.py", *ctx.fx.train_args(output="run"), "train.epochs=2000", "train.save_every=100000",
                         "train.num_workers=1")
        deadline = time.time() + 240
        while not os.path.isdir(ctx.p("run", "checkpoints")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(3)
        if proc.poll() is None:
            proc.send_signal(signum)
        r = ctx.finish(proc, 180)
        ctx.compare(before)

        def check() -> str | None:
            if "train.resume=" not in r.last:
                return "no resume command in the last line"
            try:
                iteration = int(r.last.split("iteration ")[1].split(" ")[0])
            except (IndexError, ValueError):
                return "the last line names no iteration"
            saved = checkpoints(ctx.p("run"))
            if iteration not in saved:
                return f"iteration {iteration} announced, checkpoints {saved}"
            return None

        verdict = ctx.interrupted(r, signum, check)
        if verdict.klass != OK:
            return verdict
        saved = max(checkpoints(ctx.p("run")))
        again, _ = ctx.tool("train.py", "train.resume=run", "train.stop_after=1", allowed=["run/checkpoints/*"])
        return ctx.success(again, lambda: None if saved + 1 in checkpoints(ctx.p("run")) else
                           f"resumed from {saved} with train.stop_after=1: checkpoints {checkpoints(ctx.p('run'))}")

    return run


add("train", "SIGINT during training", "exit 130, saved, resumable", _train_signal(signal.SIGINT))
add("train", "SIGTERM during training", "exit 143, saved, resumable", _train_signal(signal.SIGTERM))


@case("train", "two concurrent trainings into one train.output", "one exit 0, one exit 2")
def _(ctx: Ctx) -> Outcome:
    before = ctx.snap()
    procs = [ctx.popen("train.py", *ctx.fx.train_args(output="run")) for _ in range(2)]
    done = [ctx.finish(p, 400) for p in procs]
    ctx.compare(before, allowed=["run/*", "run/*/*"])

    def check() -> str | None:
        from clip_dinoiser.models import load_heads_state
        from clip_dinoiser.readers import read_config

        load_heads_state(ctx.p("run", "last.pt"))
        read_config(ctx.p("run", "config.yaml"))
        return _iterations(6)(ctx, done[0])

    return _one_winner(ctx, done, "train.output", check)


# ---------------------------------------------------------------- train_target

TARGET_SETTINGS = [
    ("train.lr=nan", "train.lr"), ("train.momentum=2", "train.momentum"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.poly_power=0", "train.poly_power"), ("train.min_lr=-1", "train.min_lr"), ("train.crop=[0,0]", "train.crop"),
    ("train.scale=[64]", "train.scale"), ("train.ratio_range=[0,1]", "train.ratio_range"),
    ("train.conf_thresh=2", "train.conf_thresh"), ("train.self_train_from=0", "train.self_train_from"),
    ("train.iterations=0", "train.iterations"), ("train.batch_size=nan", "train.batch_size"),
    ("target.output_stride=0", "target.output_stride"), ("target.dropout=1", "target.dropout"),
    ("target.dilations=[0]", "target.dilations"), ("target.c1_channels=-1", "target.c1_channels"),
    ("target.arch=bogus", "target.arch"), ("target.backbone=bogus", "target.backbone"),
    ("train.benchmark=bogus", "train.benchmark"), ("annotator.gamma=nan", "annotator.gamma"),
    ("train.lrr=0.1", "lr"), ("precision=fp8", "precision"), ("device=tpu", "device"),
    ("train.vocabulary=null", "train.vocabulary"), ("train.data=nowhere", "nowhere"),
    ("train.vocabulary=nothing.txt", "nothing.txt"), ("annotator.name=bogus", "annotator.name"),
    ("train.min_lr=1", "train.min_lr"),
]


def _target(extra: Sequence[str], *names: str, prepare: Callable[[Ctx], list[str] | None] | None = None
            ) -> Callable[[Ctx], Outcome]:
    def run(ctx: Ctx) -> Outcome:
        more = (prepare(ctx) if prepare else None) or []
        r, created = ctx.tool("train_target.py", *ctx.fx.target_args(), *extra, *more)
        return ctx.error(r, *names, created=created)

    return run


for _setting, _name in TARGET_SETTINGS:
    add("train_target", _setting, "error", _target([_setting], _name))

add("train_target", "train.vocabulary not UTF-8", "error",
    _target([], "voc.txt", prepare=lambda c: [f"train.vocabulary={garbage(c.p('voc.txt'), NON_UTF8)}"]))
add("train_target", "train.vocabulary empty", "error",
    _target([], "voc.txt", prepare=lambda c: [f"train.vocabulary={garbage(c.p('voc.txt'), b'')}"]))
add("train_target", "train.data without images", "error",
    _target([], "empty", prepare=lambda c: os.makedirs(c.p("empty")) or ["train.data=empty"]))
add("train_target", "train.data with a garbage image", "error",
    _target([], "broken.png", prepare=lambda c: (write_images(c.p("imgs"), 4), garbage(c.p("imgs", "broken.png")))
            and ["train.data=imgs"]))
add("train_target", "train.data with a truncated image (header readable)", "error",
    _target([], "cut.png", prepare=lambda c: (write_images(c.p("imgs"), 3),
                                              truncate(save_image(c.p("imgs", "cut.png"), 200, 300), 0.4))
            and ["train.data=imgs"]))
add("train_target", "target.pretrained garbage", "error",
    _target([], "bad.pt", prepare=lambda c: [f"target.pretrained={garbage(c.p('bad.pt'))}"]))
add("train_target", "annotator.checkpoint garbage", "error",
    _target([], "bad.pt", prepare=lambda c: [f"annotator.checkpoint={garbage(c.p('bad.pt'))}"]))


def _voc_train_root(ctx: Ctx, split: bool) -> list[str]:
    write_voc(ctx.p("voc"), split="train")
    if not split:
        shutil.rmtree(ctx.p("voc", "ImageSets"))
    return ["train.benchmark=voc20", "train.data=voc", "train.vocabulary=null"]


def _voc_empty_split(ctx: Ctx) -> list[str]:
    args = _voc_train_root(ctx, True)
    open(ctx.p("voc", "ImageSets", "Segmentation", "train.txt"), "w").close()
    return args


add("train_target", "voc20 without its split folder", "error",
    _target([], "ImageSets", prepare=lambda c: _voc_train_root(c, False)))
add("train_target", "voc20 with an empty split", "error", _target([], "train.txt", prepare=_voc_empty_split))


@case("train_target", "resume of a finished run", "error")
def _(ctx: Ctx) -> Outcome:
    run = ctx.fx.copy_run(ctx, ctx.fx.target_run())
    r, created = ctx.tool("train_target.py", f"train.resume={run}")
    return ctx.error(r, "train.iterations", created=created)


@case("train_target", "resume with changed settings", "error")
def _(ctx: Ctx) -> Outcome:
    run = ctx.fx.copy_run(ctx, ctx.fx.target_run())
    r, created = ctx.tool("train_target.py", f"train.resume={run}", "train.lr=0.5")
    return ctx.error(r, "train.lr", created=created)


@case("train_target", "new run into an existing run", "refused, unchanged")
def _(ctx: Ctx) -> Outcome:
    run = ctx.fx.copy_run(ctx, ctx.fx.target_run())
    r, created = ctx.tool("train_target.py", *ctx.fx.target_args(output=run))
    return ctx.error(r, "train.output", created=created)


@case("train_target", "stop_after=3 with save_every=2, then resume", "iteration 3 saved; resume exit 0")
def _(ctx: Ctx) -> Outcome:
    first, _ = ctx.tool("train_target.py", *ctx.fx.target_args(), "train.stop_after=3")
    verdict = ctx.success(first, lambda: None if 3 in checkpoints(ctx.p("run")) else
                          f"checkpoints {checkpoints(ctx.p('run'))}: iteration 3 not saved")
    if verdict.klass != OK:
        return verdict
    r, _ = ctx.tool("train_target.py", "train.resume=run", allowed=["run/checkpoints/*", "run/last.pt"])
    return ctx.success(r, lambda: None if os.path.isfile(ctx.p("run", "last.pt")) else "no last.pt")


@case("train_target", "SIGTERM during training", "exit 143, saved")
def _(ctx: Ctx) -> Outcome:
    proc = ctx.popen("train_target.py", *ctx.fx.target_args(), "train.iterations=100000", "train.save_every=100000")
    deadline = time.time() + 240
    while not os.path.isfile(ctx.p("run", "metrics.jsonl")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    r = ctx.finish(proc, 180)

    def check() -> str | None:
        try:
            iteration = int(r.last.split("iteration ")[1].split(" ")[0])
        except (IndexError, ValueError):
            return "the last line names no iteration"
        if "train.resume=" not in r.last or "train_target.py" not in r.last:
            return "the last line's resume command is not python tools/train_target.py train.resume=..."
        return None if iteration in checkpoints(ctx.p("run")) else f"iteration {iteration} not saved"

    return ctx.interrupted(r, signal.SIGTERM, check)


# ---------------------------------------------------------------- summarize


def _summarize(prepare: Callable[[Ctx], list[str]], *names: str) -> Callable[[Ctx], Outcome]:
    def run(ctx: Ctx) -> Outcome:
        args = prepare(ctx)
        r, created = ctx.tool("summarize.py", *args)
        return ctx.error(r, *names, created=created)

    return run


def _eval_copy(ctx: Ctx, name: str = "a") -> str:
    dest = ctx.p("runs", name)
    shutil.copytree(ctx.fx.eval_run(), dest)
    return dest


def _broken(file: str, data: bytes) -> Callable[[Ctx], list[str]]:
    def prepare(ctx: Ctx) -> list[str]:
        _eval_copy(ctx, "a")
        run = _eval_copy(ctx, "b")
        if file == "metrics.jsonl":
            shutil.rmtree(run)
            shutil.copytree(ctx.fx.train_run(), run)
        garbage(os.path.join(run, file), data)
        return ["runs"]

    return prepare


add("summarize", "folder missing", "error", _summarize(lambda c: ["nowhere"], "nowhere"))
add("summarize", "folder is a file", "error",
    _summarize(lambda c: [garbage(c.p("file.txt")) and "file.txt"], "file.txt"))
add("summarize", "no runs in the folder", "error", _summarize(lambda c: os.makedirs(c.p("runs")) or ["runs"], "runs"))
add("summarize", "results.json garbage", "error", _summarize(_broken("results.json", b"{not json"), "results.json"))
add("summarize", "results.json not UTF-8", "error",
    _summarize(_broken("results.json", b'{"voc": "\xff"}'), "results.json"))
add("summarize", "results.json a list", "error", _summarize(_broken("results.json", b"[1, 2]"), "results.json"))
add("summarize", "results.json mIoU a string", "error",
    _summarize(_broken("results.json", b'{"voc": {"mIoU": "high"}}'), "results.json"))
add("summarize", "results.json benchmark a list", "error",
    _summarize(_broken("results.json", b'{"voc": [1, 2]}'), "results.json"))
add("summarize", "results.json empty", "error", _summarize(_broken("results.json", b""), "results.json"))
add("summarize", "config.yaml garbage", "error", _summarize(_broken("config.yaml", b"a: [b\n - : :"), "config.yaml"))
add("summarize", "config.yaml not UTF-8", "error", _summarize(_broken("config.yaml", b"model: \xff\n"), "config.yaml"))
add("summarize", "config.yaml a list", "error", _summarize(_broken("config.yaml", b"- a\n- b\n"), "config.yaml"))
add("summarize", "config.yaml is a folder", "error",
    _summarize(lambda c: (_eval_copy(c), _replace_with_folder(c.p("runs", "a", "config.yaml"))) and ["runs"],
               "config.yaml"))
add("summarize", "metrics.jsonl garbage line", "error", _summarize(_broken("metrics.jsonl", b'{"loss": 1}\n{oops\n'),
                                                                   "metrics.jsonl"))
add("summarize", "metrics.jsonl not UTF-8", "error", _summarize(_broken("metrics.jsonl", b'{"loss": 1}\n\xff\n'),
                                                                "metrics.jsonl"))
add("summarize", "metrics.jsonl line a list", "error", _summarize(_broken("metrics.jsonl", b'{"loss": 1}\n[1, 2]\n'),
                                                                  "metrics.jsonl"))
add("summarize", "metrics.jsonl lines without an iteration", "error",
    _summarize(_broken("metrics.jsonl", b'{"loss": 1}\n{"loss": 2}\n'), "metrics.jsonl"))
add("summarize", "--output is a file", "error",
    _summarize(lambda c: (_eval_copy(c), garbage(c.p("sum"))) and ["runs", "--output", "sum"], "sum"))
add("summarize", "no argument", "error", _summarize(lambda c: [], "folders"))


@case("summarize", "eval and training runs", "exit 0, tables")
def _(ctx: Ctx) -> Outcome:
    _eval_copy(ctx, "a")
    shutil.copytree(ctx.fx.train_run(), ctx.p("runs", "t"))
    r, _ = ctx.tool("summarize.py", "runs", "--output", "sum")
    return ctx.success(r, lambda: None if {"summary.md", "summary.csv"} <= set(os.listdir(ctx.p("sum")))
                       else f"wrote {os.listdir(ctx.p('sum'))}")


@case("summarize", "metrics.jsonl with NaN and inf", "exit 0")
def _(ctx: Ctx) -> Outcome:
    shutil.copytree(ctx.fx.train_run(), ctx.p("runs", "t"))
    with open(ctx.p("runs", "t", "metrics.jsonl"), "a") as f:
        f.write('{"iteration": 7, "loss": NaN, "lr": Infinity}\n')
    r, _ = ctx.tool("summarize.py", "runs", "--output", "sum")
    return ctx.success(r, lambda: None if os.path.isfile(ctx.p("sum", "summary.md")) else "no summary.md")


# ---------------------------------------------------------------- benchmark.py (argument errors only)

BENCHMARK_ARGS = [
    (["eval", "--device", "tpu"], "device"), (["startup", "--repeat", "0"], "--repeat"),
    (["eval", "--json", "nowhere/out.json"], "nowhere"), (["eval", "--clip", "missing.json"], "missing.json"),
    (["eval", "--images", "-1"], "--images"), (["train", "--workers", "-1"], "--workers"),
    (["train", "--iters", "nan"], "--iters"), (["bogus"], "bogus"), (["eval", "--window-batch", "0"], "--window-batch"),
    (["target", "--crop", "0"], "--crop"), (["train", "--batch", "0"], "--batch"),
]


def _benchmark(args: list[str], name: str, prepare: Callable[[Ctx], None] | None = None) -> Callable[[Ctx], Outcome]:
    def run(ctx: Ctx) -> Outcome:
        if prepare:
            prepare(ctx)
        r, created = ctx.tool("benchmark.py", *args, timeout=120)
        return ctx.error(r, name, created=created)

    return run


for _args, _name in BENCHMARK_ARGS:
    add("benchmark", " ".join(_args), "error", _benchmark(_args, _name))
# --json is checked before --device: a folder named by --json must be the error, not the device
add("benchmark", "--json is a folder", "error naming --json, before the run",
    _benchmark(["eval", "--json", "out", "--device", "cpu"], "--json", prepare=lambda c: os.makedirs(c.p("out"))))
add("benchmark", "--json an existing file", "refused, unchanged",
    _benchmark(["eval", "--json", "old.json", "--device", "cpu"], "--overwrite",
               prepare=lambda c: garbage(c.p("old.json"), b"{}") and None))
add("benchmark", "--json into a file's folder", "error",
    _benchmark(["eval", "--json", "f/out.json"], "f", prepare=lambda c: garbage(c.p("f")) and None))
add("benchmark", "startup --clip garbage JSON", "error",
    _benchmark(["startup", "--clip", "bad.json", "--repeat", "1"], "bad.json",
               prepare=lambda c: garbage(c.p("bad.json"), b"{not json") and None))


# ---------------------------------------------------------------- the Python API (in this process)


def _api(call: Callable[[Ctx], Any], *names: str, ok: Callable[[Any], str | None] | None = None,
         env: dict[str, str] | None = None) -> Callable[[Ctx], Outcome]:
    """``call(ctx)``: a one-line ``UserError`` / ``OSError`` naming ``names`` expected (or, with
    ``ok``, a result that ``ok`` accepts)."""

    def run(ctx: Ctx) -> Outcome:
        from clip_dinoiser.errors import UserError

        before = ctx.snap()
        with _environ(env):
            try:
                result = call(ctx)
            except (UserError, OSError) as e:
                ctx.compare(before)
                message = str(e)
                if ok is not None:
                    return Outcome(TRACEBACK, f"{type(e).__name__}: {message}".splitlines()[0], "an error for a "
                                   "valid input")
                missing = [n for n in names if n.lower() not in message.lower()]
                if "\n" in message.strip() or missing:
                    return Outcome(UNCLEAR, message.splitlines()[0] if message else type(e).__name__,
                                   f"does not name {', '.join(missing)}" if missing else "more than one line")
                return Outcome(OK, f"{type(e).__name__}: {message}")
            except Exception as e:
                ctx.compare(before)
                return Outcome(TRACEBACK, f"{type(e).__name__}: {e}".splitlines()[0], traceback_tail())
        ctx.compare(before)
        if ok is None:
            return Outcome(WRONG, f"no error, returned {type(result).__name__}")
        problem = ok(result)
        return Outcome(WRONG, problem) if problem else Outcome(OK, "returned a correct result")

    return run


def _load(**kw: Any) -> Callable[[Ctx], Any]:
    def call(ctx: Ctx):
        import clip_dinoiser

        settings = {"weights": ctx.fx.heads, "device": "cpu", "clip": {"name": ctx.fx.clip_json,
                                                                       "pretrained": ctx.fx.clip},
                    "proj_dim": 16, "slide": SLIDE_DICT}
        settings.update({k: (v(ctx) if callable(v) else v) for k, v in kw.items()})
        return clip_dinoiser.load("clip_dinoiser", **settings)

    return call


add("api", "load(gamma=nan)", "error", _api(_load(gamma=float("nan")), "gamma"))
add("api", "load(delta=-5)", "error", _api(_load(delta=-5), "delta"))
add("api", "load(device='tpu')", "error", _api(_load(device="tpu"), "device"))
add("api", "load(precision='fp8')", "error", _api(_load(precision="fp8"), "precision"))
add("api", "load(slide stride 0)", "error", _api(_load(slide={"stride": [0, 0]}), "slide.stride"))
add("api", "load(slide unknown key)", "error", _api(_load(slide={"strid": [8, 8]}), "strid"))
add("api", "load(weights missing)", "error", _api(_load(weights="missing.pt"), "missing.pt"))
add("api", "load(weights garbage)", "error", _api(_load(weights=lambda c: garbage(c.p("bad.pt"))), "bad.pt"))
add("api", "load(unknown key gama)", "error", _api(_load(gama=0.3), "gama"))
add("api", "load(name bogus)", "error",
    _api(lambda c: __import__("clip_dinoiser").load("bogus", device="cpu"), "bogus"))
add("api", "load(clip weights garbage)", "error",
    _api(_load(clip=lambda c: {"name": c.fx.clip_json, "pretrained": garbage(c.p("bad.pt"))}), "bad.pt"))
add("api", "load(temperature=0)", "error", _api(_load(maskclip={"temperature": 0}), "temperature"))


def _seg(image: Callable[[Ctx], Any], classes: Any = ("cat", "dog")) -> Callable[[Ctx], Any]:
    return lambda ctx: ctx.fx.segmenter().segment(image(ctx), list(classes) if isinstance(classes, tuple) else classes)


def _shape_ok(h: int, w: int, k: int = 2) -> Callable[[Any], str | None]:
    def ok(result) -> str | None:
        if result.labels.shape != (h, w) or result.probs.shape != (k, h, w):
            return f"labels {result.labels.shape}, probs {result.probs.shape}"
        if not np.array_equal(result.labels, result.probs.argmax(0)):
            return "labels are not the argmax of probs"
        if not np.allclose(result.probs.sum(0), 1, atol=1e-4):
            return "probabilities do not sum to 1"
        return None

    return ok


add("api", "segment(missing path)", "error", _api(_seg(lambda c: c.p("gone.jpg")), "gone.jpg"))
add("api", "segment(a folder)", "error", _api(_seg(lambda c: c.dir), os.sep))
add("api", "segment(garbage file)", "error", _api(_seg(lambda c: garbage(c.p("bad.png"))), "bad.png"))
add("api", "segment(truncated file)", "error",
    _api(_seg(lambda c: truncate(save_image(c.p("cut.png"), 200, 300))), "cut.png"))
add("api", "segment(decompression bomb)", "error",
    _api(_seg(lambda c: save_image(c.p("big.png"), 100, 100)), "big.png", env=BOMB_ENV))
add("api", "segment(0 x 5 array)", "error", _api(_seg(lambda c: np.zeros((0, 5, 3), np.uint8)), "shape"))
add("api", "segment(float array with NaN)", "error",
    _api(_seg(lambda c: np.full((8, 8, 3), np.nan, np.float32)), "[0, 1]"))
add("api", "segment(float array above 1)", "error", _api(_seg(lambda c: np.full((8, 8, 3), 3.0)), "[0, 1]"))
add("api", "segment(4-D array)", "error", _api(_seg(lambda c: np.zeros((1, 8, 8, 3), np.uint8)), "shape"))
add("api", "segment(an int)", "error", _api(_seg(lambda c: 5), "image"))
add("api", "segment(None)", "error", _api(_seg(lambda c: None), "image"))
add("api", "segment(classes=[])", "error", _api(_seg(lambda c: random_image(8, 8), []), "empty"))
add("api", "segment(classes with a twin)", "error", _api(_seg(lambda c: random_image(8, 8), ["cat", "Cat"]), "cat"))
add("api", "segment(classes=[''])", "error", _api(_seg(lambda c: random_image(8, 8), [""]), "empty"))
add("api", "segment(classes=None)", "error", _api(_seg(lambda c: random_image(8, 8), None), "class"))
add("api", "segment(1x1 array)", "correct shapes", _api(_seg(lambda c: random_image(1, 1)), ok=_shape_ok(1, 1)))
add("api", "segment(1xN array)", "correct shapes", _api(_seg(lambda c: random_image(1, 75)), ok=_shape_ok(1, 75)))
add("api", "segment(Nx1 array)", "correct shapes", _api(_seg(lambda c: random_image(75, 1)), ok=_shape_ok(75, 1)))
add("api", "segment(16-bit PNG)", "correct shapes",
    _api(_seg(lambda c: save_16bit(c.p("a.png"), np.arange(30 * 40).reshape(30, 40) * 50)), ok=_shape_ok(30, 40)))
add("api", "segment(RGBA array)", "correct shapes",
    _api(_seg(lambda c: np.dstack([random_image(20, 30), np.zeros((20, 30), np.uint8)])), ok=_shape_ok(20, 30)))
add("api", "segment(classes as one string)", "correct shapes",
    _api(_seg(lambda c: random_image(20, 30), "cat"), ok=_shape_ok(20, 30, 1)))
add("api", "segment(empty list of images)", "[]", _api(_seg(lambda c: []), ok=lambda r: None if r == [] else repr(r)))


# ---------------------------------------------------------------- issue #31 (nothing silent, round three): silent.py

from . import silent  # noqa: E402, F401 (registers its cases here, after these)
