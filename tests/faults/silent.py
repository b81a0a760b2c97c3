"""The battery's cases of issue #31 (nothing silent, round three), by class of fault (each case's
``group``): 1 full disk, 2 shared machines, 3 inputs changed under a resume, 4 keys checked late,
5 wrong tool or broken folder, 6 signals, 7 summaries, 8 a target scored with another's text.

Real faults where the machine allows them, a case skipped with its reason where it does not:
full disks and read-only file systems are small tmpfs mounts inside the case's folder (root and
``mount``); a colleague is a system user made with ``useradd`` who reads the run files with
``runuser`` (its own ``tools/summarize.py`` where this Python is reachable by it; else ``cat``
of every file, the same kernel permission check). A disk quota (EDQUOT) cannot be made on a
tmpfs: ``tests/test_nothing_silent.py`` gives its errno to the same writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from .cases import add, case
from .harness import (
    OK,
    TOOLS,
    TRACEBACK,
    WRONG,
    Ctx,
    Outcome,
    Proc,
    checkpoints,
    garbage,
    miou_problem,
    run_command,
    save_image,
    write_images,
    write_voc,
)

FULL, SHARED, INPUTS, KEYS, BROKEN, SIGNALS, SUMMARIES, TARGET = (
    "1 full disk", "2 shared machines", "3 inputs changed under a resume", "4 keys checked late",
    "5 wrong tool or broken folder", "6 signals", "7 summaries", "8 a target scored with another's text")
OTHER_USER = "cdbattery"  # the colleague (a system user made for the battery)


# ---------------------------------------------------------------- a small disk of its own


class Tmpfs:
    """A tmpfs of ``size`` mounted at ``<case>/<name>``: filled to leave ``leave`` bytes, remounted
    read-only, unmounted at the end of the case. The case is skipped where nothing can be mounted."""

    def __init__(self, ctx: Ctx, name: str = "disk", size: str = "2m") -> None:
        self.path = ctx.p(name)
        os.makedirs(self.path, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", self.path],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs for a full disk here ({(r.stderr or r.stdout).strip()[:120]}): the "
                        "battery needs root (CAP_SYS_ADMIN); tests/test_nothing_silent.py covers the writer")
        self.filler = os.path.join(self.path, "filler")

    def p(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Write a filler file until ``leave`` bytes are free (whole pages)."""
        with open(self.filler, "ab") as f:
            while self.free() > leave:
                try:
                    f.write(b"\0" * min(1 << 16, max(4096, self.free() - leave)))
                    f.flush()
                except OSError:
                    break

    def unfill(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.filler)

    def readonly(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", self.path], check=True, capture_output=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", self.path], capture_output=True)


@contextlib.contextmanager
def tmpfs(ctx: Ctx, name: str = "disk", size: str = "2m") -> Iterator[Tmpfs]:
    disk = Tmpfs(ctx, name, size)
    try:
        yield disk
    finally:
        disk.close()


def no_temporary_files(folder: str) -> str | None:
    """A temporary file of the writer left below ``folder``, or None."""
    for top, _, names in os.walk(folder):
        for n in names:
            if n.endswith((".tmp", ".part")) or ".in_use." in n:
                return f"left behind: {os.path.join(top, n)}"
    return None


def in_run(tool: str, extra: Sequence[str], *names: str, prepare: Callable[[Ctx], list[str] | None] | None = None,
           source: Callable[[Ctx], str] | None = None) -> Callable[[Ctx], Outcome]:
    """``tools/<tool>`` with the fixture's training arguments and ``extra`` (or, with ``source``,
    resuming a copy of that run after ``prepare(ctx, run)``): one line naming ``names``."""

    def run(ctx: Ctx) -> Outcome:
        if source is not None:
            folder = ctx.fx.copy_run(ctx, source(ctx))
            if prepare is not None:
                prepare(ctx, folder)
            r, created = ctx.tool(tool, f"train.resume={folder}", *extra)
        else:
            more = (prepare(ctx) if prepare else None) or []
            args = ctx.fx.train_args() if tool == "train.py" else ctx.fx.target_args()
            r, created = ctx.tool(tool, *args, *extra, *more)
        return ctx.error(r, *names, created=created)

    return run


def refused(tool: str, args: Callable[[Ctx], Sequence[str]], *names: str,
            prepare: Callable[[Ctx], object] | None = None) -> Callable[[Ctx], Outcome]:
    """``tools/<tool>`` with ``args(ctx)`` (after ``prepare(ctx)``): one line naming ``names``, nothing left."""

    def run(ctx: Ctx) -> Outcome:
        if prepare is not None:
            prepare(ctx)
        r, created = ctx.tool(tool, *args(ctx))
        return ctx.error(r, *names, created=created)

    return run


def also(verdict: Outcome, problem: str | None) -> Outcome:
    """``verdict``, or a wrong result when it is ok but ``problem`` was found."""
    return Outcome(WRONG, problem, verdict.message) if verdict.klass == OK and problem else verdict


# ---------------------------------------------------------------- 1. full disk, quota, read-only file system


def _full_train(tool: str, leave: int, size: str, file: str) -> Callable[[Ctx], Outcome]:
    """A new run on a disk that has room for its small files, not for its first checkpoint."""

    def run(ctx: Ctx) -> Outcome:
        with tmpfs(ctx, size=size) as disk:
            disk.fill(leave)
            args = ctx.fx.train_args(output="disk/run") if tool == "train.py" else \
                ctx.fx.target_args(output="disk/run")
            r, created = ctx.tool(tool, *args)
            verdict = ctx.error(r, file, "no space left on device", created=created)
            return also(verdict, no_temporary_files(disk.path) or (
                "the failed run left its folder" if os.path.exists(disk.p("run")) else None))

    return run


add("train", "first checkpoint on a full disk (tmpfs)", "one line naming it, nothing left",
    _full_train("train.py", 48 << 10, "1m", "iter_0000002.pt"), FULL)
add("train_target", "first checkpoint on a full disk (tmpfs)", "one line naming it, nothing left",
    _full_train("train_target.py", 96 << 10, "4m", "iter_0000002.pt"), FULL)


def _full_resume(tool: str, source: str, size: str, leave: int) -> Callable[[Ctx], Outcome]:
    """A stopped run resumed on a full disk: the next checkpoint cannot be written; the older one
    stays, the line names both; once space is freed the resume goes on."""

    def run(ctx: Ctx) -> Outcome:
        with tmpfs(ctx, size=size) as disk:
            if source == "train":
                shutil.copytree(ctx.fx.stopped_run(), disk.p("run"), symlinks=True)
            else:
                first, _ = ctx.tool(tool, *ctx.fx.target_args(output="disk/run"), "train.stop_after=2",
                                    allowed=["disk/*", "disk/*/*", "disk/*/*/*"])
                if first.rc != 0:
                    return ctx.success(first)
            before = checkpoints(disk.p("run"))
            disk.fill(leave)
            r, _ = ctx.tool(tool, "train.resume=disk/run", allowed=["disk/run/tensorboard/*"])
            verdict = ctx.error(r, "iter_0000004.pt", "no space left on device",
                                f"iteration {before[-1]} is the newest checkpoint kept")
            verdict = also(verdict, no_temporary_files(disk.path) or (
                None if checkpoints(disk.p("run")) == before else f"checkpoints {checkpoints(disk.p('run'))}"))
            if verdict.klass != OK:
                return verdict
            disk.unfill()
            again, _ = ctx.tool(tool, "train.resume=disk/run", allowed=["disk/run/*", "disk/run/*/*"])
            return ctx.success(again, lambda: None if os.path.isfile(disk.p("run", "last.pt")) else "no last.pt")

    return run


add("train", "resume on a full disk keeps the older checkpoint (tmpfs)", "one line; iteration 2 kept; resumes later",
    _full_resume("train.py", "train", "1m", 48 << 10), FULL)
add("train_target", "resume on a full disk keeps the older checkpoint (tmpfs)",
    "one line; iteration 2 kept; resumes later", _full_resume("train_target.py", "target", "8m", 96 << 10), FULL)


@case("eval", "claim on a full disk, then a rerun once space is freed (tmpfs)", "one line; the rerun works", FULL)
def _(ctx: Ctx) -> Outcome:
    ids = write_voc(ctx.p("voc"), border=False)
    with tmpfs(ctx, size="1m") as disk:
        disk.fill(0)
        r, created = ctx.tool("eval.py", *ctx.fx.eval_args(output="disk/out"))
        verdict = ctx.error(r, ".in_use", "no space left on device", created=created)
        verdict = also(verdict, "the claim or its folder was left" if os.path.exists(disk.p("out")) else None)
        if verdict.klass != OK:
            return verdict
        disk.unfill()
        again, _ = ctx.tool("eval.py", *ctx.fx.eval_args(output="disk/out"), "save_predictions=true",
                            allowed=["disk/*"])
        return ctx.success(again, lambda: miou_problem(disk.p("out"), ctx.p("voc"), ids))


@case("eval", "results on a full disk (tmpfs)", "one line naming the file, nothing left", FULL)
def _(ctx: Ctx) -> Outcome:
    write_voc(ctx.p("voc"))
    with tmpfs(ctx, size="1m") as disk:
        disk.fill(6 << 10)  # the claim fits, config.yaml and the results do not
        r, created = ctx.tool("eval.py", *ctx.fx.eval_args(output="disk/out"))
        verdict = ctx.error(r, "disk/out/", "no space left on device", created=created)
        return also(verdict, no_temporary_files(disk.path))


@case("eval", "an empty .in_use left on a full disk is taken over", "exit 0, one warning line", FULL)
def _(ctx: Ctx) -> Outcome:
    ids = write_voc(ctx.p("voc"), border=False)
    os.makedirs(ctx.p("out"))
    open(ctx.p("out", ".in_use"), "w").close()
    os.utime(ctx.p("out", ".in_use"), (time.time() - 3600, time.time() - 3600))
    r, _ = ctx.tool("eval.py", *ctx.fx.eval_args(), "save_predictions=true", allowed=["out/.in_use"])

    def check() -> str | None:
        if "taking over .in_use: an empty claim" not in r.out + r.err:
            return "no line says the empty claim was taken over"
        return miou_problem(ctx.p("out"), ctx.p("voc"), ids) or (
            ".in_use left after the run" if os.path.exists(ctx.p("out", ".in_use")) else None)

    return ctx.success(r, check)


@case("eval", "a claim of a process that has ended is taken over", "exit 0, one warning line", FULL)
def _(ctx: Ctx) -> Outcome:
    write_voc(ctx.p("voc"))
    os.makedirs(ctx.p("out"))
    with open(ctx.p("out", ".in_use"), "w") as f:
        f.write(f"999999999 {os.uname().nodename} 2026-01-01T00:00:00 python tools/eval.py\n")
    r, _ = ctx.tool("eval.py", *ctx.fx.eval_args(), allowed=["out/.in_use"])
    return ctx.success(r, lambda: None if "which has ended" in r.out + r.err else "the take-over is not said")


@case("summarize", "--output on a full disk (tmpfs)", "one line naming the file", FULL)
def _(ctx: Ctx) -> Outcome:
    shutil.copytree(ctx.fx.eval_run(), ctx.p("runs", "a"))
    with tmpfs(ctx, size="1m") as disk:
        disk.fill(0)
        r, created = ctx.tool("summarize.py", "runs", "--output", "disk/sum")
        return also(ctx.error(r, "disk/sum", "no space left on device", created=[c for c in created
                                                                                 if c != "disk/sum"]),
                    no_temporary_files(disk.path))


@case("eval", "output on a read-only file system (tmpfs)", "one line saying so", FULL)
def _(ctx: Ctx) -> Outcome:
    write_voc(ctx.p("voc"))
    with tmpfs(ctx, size="1m") as disk:
        disk.readonly()
        r, created = ctx.tool("eval.py", *ctx.fx.eval_args(output="disk/out"))
        return ctx.error(r, "output=disk/out", "read-only file system", created=created)


@case("train", "resume of a run on a read-only file system (tmpfs)", "one line saying so, run untouched", FULL)
def _(ctx: Ctx) -> Outcome:
    with tmpfs(ctx, size="1m") as disk:
        shutil.copytree(ctx.fx.stopped_run(), disk.p("run"), symlinks=True)
        disk.readonly()
        r, created = ctx.tool("train.py", "train.resume=disk/run")
        return ctx.error(r, "disk/run", "read-only file system", created=created)


@case("eval", "download cache on a read-only file system (tmpfs)", "one line: XDG_CACHE_HOME", BROKEN)
def _(ctx: Ctx) -> Outcome:
    write_voc(ctx.p("voc"))
    mirror = ctx.p("mirror")
    os.makedirs(mirror)
    shutil.copy(ctx.fx.heads, os.path.join(mirror, "clip_dinoiser_last.pt"))
    with tmpfs(ctx, "cache", size="1m") as cache:
        cache.readonly()
        args = [a for a in ctx.fx.eval_args() if not a.startswith("model.checkpoint=")]
        r, created = ctx.tool("eval.py", *args, "model.checkpoint=released", env={
            "XDG_CACHE_HOME": cache.path, "CLIP_DINOISER_RELEASES_URL": f"file://{mirror}"})
        return ctx.error(r, "read-only file system", "XDG_CACHE_HOME", created=created)


# ---------------------------------------------------------------- 2. shared machines: the umask's modes, a colleague


def _with_umask(ctx: Ctx, mask: int, script: str, *args: str) -> Proc:
    cmd = ["sh", "-c", f'umask {mask:03o} && exec "$@"', "sh", sys.executable, os.path.join(TOOLS, script), *args]
    before = ctx.snap()
    proc = run_command(cmd, cwd=ctx.dir, env=ctx.fx.env(), timeout=300)
    ctx.procs.append(proc)
    ctx.compare(before, allowed=["out/*", "out/*/*", "out/*/*/*", "run/*", "run/*/*", "sum/*"])
    return proc


def _modes(folder: str, expected: int) -> str | None:
    for top, _, names in os.walk(folder):
        for n in names:
            mode = os.stat(os.path.join(top, n)).st_mode & 0o777
            if mode != expected:
                name = os.path.relpath(os.path.join(top, n), folder)
                return f"{name} has mode {mode:o}, the umask gives {expected:o}"
    return None


@case("eval", "run files get the umask's mode (umask 002)", "every file 664", SHARED)
def _(ctx: Ctx) -> Outcome:
    write_voc(ctx.p("voc"))
    r = _with_umask(ctx, 0o002, "eval.py", *ctx.fx.eval_args(), "save_predictions=true")
    return ctx.success(r, lambda: _modes(ctx.p("out"), 0o664))


@case("train", "run files get the umask's mode (umask 027)", "every file 640", SHARED)
def _(ctx: Ctx) -> Outcome:
    r = _with_umask(ctx, 0o027, "train.py", *ctx.fx.train_args(output="run"), "train.epochs=1")
    return ctx.success(r, lambda: _modes(ctx.p("run"), 0o640))


def _colleague() -> str:
    """The colleague's user name (made on first use), or a skip with the reason."""
    if os.geteuid() != 0 or not shutil.which("runuser") or not shutil.which("useradd"):
        pytest.skip("another user needs root, runuser and useradd: checked through the modes instead (the cases "
                    "'run files get the umask's mode')")
    if subprocess.run(["id", "-u", OTHER_USER], capture_output=True).returncode != 0:
        made = subprocess.run(["useradd", "-M", "-r", "-s", "/usr/sbin/nologin", OTHER_USER], capture_output=True,
                              text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot make the user {OTHER_USER}: {made.stderr.strip()[:120]}")
    return OTHER_USER


@case("summarize", "a colleague summarizes the runs (another user)", "every run file readable by another user",
      SHARED)
def _(ctx: Ctx) -> Outcome:
    user = _colleague()
    shared = tempfile.mkdtemp(prefix="battery_shared_")  # pytest's folders are the owner's only (0700)
    try:
        os.chmod(shared, 0o755)
        runs = os.path.join(shared, "runs")
        shutil.copytree(ctx.fx.eval_run(), os.path.join(runs, "eval"))  # copies keep the tools' modes
        shutil.copytree(ctx.fx.train_run(), os.path.join(runs, "train"))
        out = os.path.join(shared, "summary")
        os.makedirs(out)
        shutil.chown(out, user)
        python_reachable = subprocess.run(["runuser", "-u", user, "--", sys.executable, "-c", "pass"],
                                          capture_output=True).returncode == 0
        if python_reachable:
            cmd = ["runuser", "-u", user, "--", "env", f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}",
                   sys.executable, os.path.join(TOOLS, "summarize.py"), runs, "--output", out]
            r = run_command(cmd, cwd=shared, env=ctx.fx.env(), timeout=300)
            ctx.procs.append(r)
            return ctx.success(r, lambda: None if os.path.isfile(os.path.join(out, "summary.md")) else "no summary.md")
        # this Python lives where another user cannot reach it (/root): the same kernel check with cat
        unreadable = []
        for top, _, names in os.walk(runs):
            for n in names:
                path = os.path.join(top, n)
                if subprocess.run(["runuser", "-u", user, "--", "cat", path], capture_output=True).returncode:
                    unreadable.append(os.path.relpath(path, runs))
        if unreadable:
            return Outcome(WRONG, f"{len(unreadable)} run files unreadable by another user, e.g. {unreadable[0]}",
                           "(read with cat as that user: this Python is not reachable by it)")
        return Outcome(OK, "every run file read by another user (with cat: this Python is not reachable by it)")
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# ---------------------------------------------------------------- 3. inputs that change under a resume


@case("train_target", "resume after the vocabulary file was edited", "refused naming the file", INPUTS)
def _(ctx: Ctx) -> Outcome:
    shutil.copy(ctx.fx.classes, ctx.p("classes.txt"))
    first, _ = ctx.tool("train_target.py", *ctx.fx.target_args(vocabulary="classes.txt"), "train.stop_after=2",
                        allowed=["run/*", "run/*/*"])
    if first.rc != 0:
        return ctx.success(first)
    with open(ctx.p("classes.txt"), "a") as f:
        f.write("yellow thing\n")
    r, created = ctx.tool("train_target.py", "train.resume=run", allowed=["run/tensorboard/*"])
    verdict = ctx.error(r, "classes.txt", "train.vocabulary", "changed", created=created,
                        leave=["run/tensorboard/*"])
    log = open(ctx.p("run", "train.log")).read()
    return also(verdict, "train.log says 'resuming' for a refused resume" if "resuming" in log else None)


@case("train", "resume after images were added to train.data", "refused naming train.data", INPUTS)
def _(ctx: Ctx) -> Outcome:
    write_images(ctx.p("imgs"), 4)
    first, _ = ctx.tool("train.py", *ctx.fx.train_args("imgs"), "train.stop_after=2", allowed=["run/*", "run/*/*"])
    if first.rc != 0:
        return ctx.success(first)
    save_image(ctx.p("imgs", "new.png"), 80, 100, seed=9)
    r, created = ctx.tool("train.py", "train.resume=run")
    return ctx.error(r, "train.data", "imgs", "4 files then, 5 now", created=created)


@case("train", "resume after the images were copied again (new times, same files)", "exit 0", INPUTS)
def _(ctx: Ctx) -> Outcome:
    write_images(ctx.p("imgs"), 4)
    first, _ = ctx.tool("train.py", *ctx.fx.train_args("imgs"), "train.stop_after=2", allowed=["run/*", "run/*/*"])
    if first.rc != 0:
        return ctx.success(first)
    for top, _, names in os.walk(ctx.p("imgs")):
        for n in names:
            os.utime(os.path.join(top, n), (time.time() + 60, time.time() + 60))
    r, _ = ctx.tool("train.py", "train.resume=run", allowed=["run/*", "run/*/*", "imgs/*", "imgs/*/*"])
    return ctx.success(r, lambda: None if os.path.isfile(ctx.p("run", "last.pt")) else "no last.pt")


@case("train_target", "resume after the split file changed", "refused naming the split file", INPUTS)
def _(ctx: Ctx) -> Outcome:
    ids = write_voc(ctx.p("voc"), [(60, 80), (48, 64), (40, 56)], split="train")
    with open(ctx.p("voc", "ImageSets", "Segmentation", "train.txt"), "w") as f:
        f.write("\n".join(ids[:2]) + "\n")
    args = [a for a in ctx.fx.target_args() if not a.startswith(("train.benchmark=", "train.data=",
                                                                  "train.vocabulary="))]
    first, _ = ctx.tool("train_target.py", *args, "train.benchmark=voc20", "train.data=voc", "train.stop_after=2",
                        allowed=["run/*", "run/*/*"])
    if first.rc != 0:
        return ctx.success(first)
    with open(ctx.p("voc", "ImageSets", "Segmentation", "train.txt"), "a") as f:
        f.write(ids[2] + "\n")
    r, created = ctx.tool("train_target.py", "train.resume=run")
    return ctx.error(r, "train.txt", "changed", created=created)


# ---------------------------------------------------------------- 4. every key, under its full name, first


def _early(tool: str, extra: Sequence[str], *names: str) -> Callable[[Ctx], Outcome]:
    """A bad key refused in one line naming it, before any model is loaded or iteration runs."""

    def run(ctx: Ctx) -> Outcome:
        args = ctx.fx.train_args() if tool == "train.py" else ctx.fx.target_args()
        r, created = ctx.tool(tool, *args, *extra)
        late = [w for w in ("loading CLIP", "iteration 1/", "loading the target") if w in r.out + r.err]
        return also(ctx.error(r, *names, created=created), f"refused only after '{late[0]}'" if late else None)

    return run


for _tool in ("train.py", "train_target.py"):
    _name = _tool[:-3]
    add(_name, "eval.data.corruption=bogus (before the first iteration)", "error naming eval.data.corruption",
        _early(_tool, ["eval.data.corruption=bogus"], "eval.data.corruption"), KEYS)
    add(_name, "eval.precision=fp8 (before the first iteration)", "error naming eval.precision",
        _early(_tool, ["eval.precision=fp8"], "eval.precision"), KEYS)
    add(_name, "eval.data.name=bogus with eval off (before the first iteration)", "error naming eval.data.name",
        _early(_tool, ["eval.data.name=bogus"], "eval.data.name"), KEYS)
    add(_name, "eval.data.vocabulary_set=bogus (before the first iteration)", "error naming eval.data.vocabulary_set",
        _early(_tool, ["eval.data.vocabulary_set=bogus"], "eval.data.vocabulary_set"), KEYS)
    add(_name, "eval.data.vocabulary missing (before the first iteration)", "error naming eval.data.vocabulary",
        _early(_tool, ["eval.data.vocabulary=nothing.txt"], "nothing.txt", "eval.data.vocabulary"), KEYS)
add("train_target", "train.self_train_from beyond train.iterations", "error naming both",
    _early("train_target.py", ["train.self_train_from=9"], "train.self_train_from", "train.iterations"), KEYS)
add("train_target", "train.vocabulary_set=bogus", "error naming train.vocabulary_set",
    _early("train_target.py", ["train.vocabulary_set=bogus", "train.benchmark=voc20", "train.data=nowhere",
                               "train.vocabulary=null"], "train.vocabulary_set"), KEYS)
add("eval", "data.vocabulary_set=bogus", "error naming data.vocabulary_set",
    refused("eval.py", lambda c: [*c.fx.eval_args(), "data.vocabulary_set=bogus"], "data.vocabulary_set",
            prepare=lambda c: write_voc(c.p("voc"))), KEYS)


# ---------------------------------------------------------------- 5. the wrong tool, a broken folder


def _resume_with(tool: str, source: str, *names: str) -> Callable[[Ctx], Outcome]:
    def run(ctx: Ctx) -> Outcome:
        folder = ctx.fx.copy_run(ctx, {"stopped": ctx.fx.stopped_run, "target": ctx.fx.target_run,
                                       "eval": ctx.fx.eval_run}[source]())
        r, created = ctx.tool(tool, f"train.resume={folder}")
        return ctx.error(r, *names, created=created)

    return run


add("train_target", "resume of a heads run (tools/train.py's)", "error naming tools/train.py",
    _resume_with("train_target.py", "stopped", "tools/train.py", "train.resume=run"), BROKEN)
add("train", "resume of a MaskCLIP+ run (tools/train_target.py's)", "error naming tools/train_target.py",
    _resume_with("train.py", "target", "tools/train_target.py"), BROKEN)
add("train", "resume of an evaluation's folder", "error naming tools/eval.py",
    _resume_with("train.py", "eval", "tools/eval.py"), BROKEN)


def _drop_settings(ctx: Ctx, run: str) -> None:
    import yaml

    path = ctx.p(run, "config.yaml")
    saved = yaml.safe_load(open(path))
    del saved["model"]
    del saved["train"]["data"]
    with open(path, "w") as f:
        yaml.safe_dump(saved, f)


add("train", "resume: config.yaml lacking settings", "error naming model, train.data",
    in_run("train.py", [], "config.yaml", "model", "train.data", prepare=_drop_settings,
           source=lambda c: c.fx.stopped_run()), BROKEN)


def _link_output(kind: str) -> Callable[[Ctx], list[str]]:
    def make(ctx: Ctx) -> None:
        if kind == "dangling":
            os.symlink("nowhere", ctx.p("out"))
        else:
            os.symlink("out2", ctx.p("out"))
            os.symlink("out", ctx.p("out2"))

    return make


for _kind, _what in (("dangling", "which does not exist"), ("loop", "link loop")):
    add("eval", f"output is a {_kind} symbolic link", "error saying what to do",
        refused("eval.py", lambda c: c.fx.eval_args(), "output=out", _what,
                prepare=lambda c, k=_kind: (write_voc(c.p("voc")), _link_output(k)(c))), BROKEN)
add("train", "train.output is a dangling symbolic link", "error saying what to do",
    in_run("train.py", [], "train.output", "which does not exist", prepare=lambda c: _link_output("dangling")(c) or
           ["train.output=out"]), BROKEN)
add("demo", "output is a symbolic link loop", "error saying what to do",
    refused("demo.py", lambda c: c.fx.demo_args(), "output=out", "link loop",
            prepare=lambda c: (save_image(c.p("photo.png")), _link_output("loop")(c))), BROKEN)
add("summarize", "--output is a dangling symbolic link", "error saying what to do",
    refused("summarize.py", lambda c: ["runs", "--output", "out"], "--output", "which does not exist",
            prepare=lambda c: (shutil.copytree(c.fx.eval_run(), c.p("runs", "a")), _link_output("dangling")(c))),
    BROKEN)


@case("eval", "hydra/launcher=slurm without the cluster extra", 'error: pip install -e ".[cluster]"', BROKEN)
def _(ctx: Ctx) -> Outcome:
    shim = ctx.p("no_plugins", "hydra_plugins")
    os.makedirs(shim)
    open(os.path.join(shim, "__init__.py"), "w").close()  # a regular package: hydra finds no plugin behind it
    path = os.pathsep.join(p for p in (ctx.p("no_plugins"), os.environ.get("PYTHONPATH")) if p)
    write_voc(ctx.p("voc"))
    r, created = ctx.tool("eval.py", "-m", "hydra/launcher=slurm", *ctx.fx.eval_args(), env={"PYTHONPATH": path})
    return ctx.error(r, 'pip install -e ".[cluster]"', created=created)


add("train", "a path with a space, unquoted", "error showing the quoted argument",
    in_run("train.py", ["train.output=my", "runs/x"], "'train.output=my runs/x'"), BROKEN)
add("eval", "data.root with brackets, unquoted for hydra", "error showing how to quote it",
    refused("eval.py", lambda c: [*c.fx.eval_args(), "data.root=my (voc)"], "'data.root=\"my (voc)\"'"), BROKEN)
add("train_target", "a garbage image refused before the model is built", "error naming it, no model loaded",
    lambda ctx: (write_images(ctx.p("imgs"), 4), garbage(ctx.p("imgs", "zz.png")),
                 _early("train_target.py", ["train.data=imgs"], "zz.png")(ctx))[-1], BROKEN)


# ---------------------------------------------------------------- 6. signals


def _two_signals(tool: str, when: str, signum: int = signal.SIGINT) -> Callable[[Ctx], Outcome]:
    """Two signals 50 ms apart, ``when`` the run has claimed its folder (``claimed``: before the
    first iteration) or is iterating (``iterating``): exit 128 + the signal, one line, no
    traceback; then whatever was kept resumes, or nothing is left and a rerun works."""

    def run(ctx: Ctx) -> Outcome:
        base = ctx.fx.train_args(output="run") if tool == "train.py" else ctx.fx.target_args(output="run")
        long = ["train.epochs=2000"] if tool == "train.py" else ["train.iterations=100000"]
        before = ctx.snap()
        proc = ctx.popen(tool, *base, *long, "train.save_every=100000",
                         *(["train.im_size=128"] if tool == "train.py" else []))
        mark = ctx.p("run", "config.yaml" if when == "claimed" else "checkpoints")
        deadline = time.time() + 240
        while not os.path.exists(mark) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        if when == "iterating":
            time.sleep(2)
        for _ in range(2):
            if proc.poll() is None:
                proc.send_signal(signum)
            time.sleep(0.05)
        r = ctx.finish(proc, 180)
        ctx.compare(before, allowed=["run/*", "run/*/*"])
        lines = [ln for ln in r.err.splitlines() if "interrupted" in ln.lower()]
        verdict = ctx.interrupted(r, signum, lambda: None if len(lines) == 1 else f"{len(lines)} 'interrupted' lines")
        if verdict.klass != OK:
            return verdict
        saved = checkpoints(ctx.p("run"))
        if saved:
            again, _ = ctx.tool(tool, "train.resume=run", "train.stop_after=1", allowed=["run/*", "run/*/*"])
            return ctx.success(again, lambda: None if max(saved) + 1 in checkpoints(ctx.p("run")) else
                               f"resumed from {max(saved)}: checkpoints {checkpoints(ctx.p('run'))}")
        if os.path.exists(ctx.p("run")):
            return Outcome(WRONG, f"stopped before its first checkpoint, it left {sorted(os.listdir(ctx.p('run')))}",
                           r.last)
        again, _ = ctx.tool(tool, *base, "train.stop_after=1", allowed=["run/*", "run/*/*"])
        return ctx.success(again)

    return run


add("train", "two SIGINT in a row during training", "exit 130, one line, resumable", _two_signals("train.py",
                                                                                                 "iterating"), SIGNALS)
add("train", "two SIGINT before the first checkpoint", "exit 130, nothing left, a rerun works",
    _two_signals("train.py", "claimed"), SIGNALS)
add("train", "two SIGTERM before the first checkpoint", "exit 143, nothing left, a rerun works",
    _two_signals("train.py", "claimed", signal.SIGTERM), SIGNALS)
add("train_target", "two SIGINT in a row during training", "exit 130, one line, resumable",
    _two_signals("train_target.py", "iterating"), SIGNALS)
add("train_target", "two SIGINT before the first checkpoint", "exit 130, nothing left, a rerun works",
    _two_signals("train_target.py", "claimed"), SIGNALS)


@case("eval", "two SIGINT in a row during the evaluation", "exit 130, one line, nothing left", SIGNALS)
def _(ctx: Ctx) -> Outcome:
    write_voc(ctx.p("voc"), [(300, 400)] * 40)
    args = [a for a in ctx.fx.eval_args() if not a.startswith("slide.scale")] + ["slide.scale=[2048,448]"]
    before = ctx.snap()
    proc = ctx.popen("eval.py", *args)
    deadline = time.time() + 120
    while not os.path.isdir(ctx.p("out")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(4)
    for _ in range(2):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    r = ctx.finish(proc, 120)
    created = ctx.compare(before)
    lines = [ln for ln in r.err.splitlines() if "interrupted" in ln.lower()]
    return ctx.interrupted(r, signal.SIGINT, lambda: (f"left behind: {', '.join(created)}" if created else None)
                           or (None if len(lines) == 1 else f"{len(lines)} 'interrupted' lines"))


@case("train", "SIGTERM as the run ends", "no traceback; last.pt whole; nothing claimed", SIGNALS)
def _(ctx: Ctx) -> Outcome:
    proc = ctx.popen("train.py", *ctx.fx.train_args(output="run"), "train.epochs=3")
    deadline = time.time() + 240
    while not os.path.exists(ctx.p("run", "last.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    r = ctx.finish(proc, 120)
    if "Traceback" in r.err:
        return Outcome(TRACEBACK, r.last, f"exit {r.rc}")
    if r.rc not in (0, 143):
        return Outcome(TRACEBACK, r.last, f"exit {r.rc}, expected 0 or 143")

    def check() -> str | None:
        from clip_dinoiser.models import load_heads_state

        load_heads_state(ctx.p("run", "last.pt"))
        return ".in_use left behind" if os.path.exists(ctx.p("run", ".in_use")) else None

    problem = check()
    return Outcome(WRONG, problem, r.last) if problem else Outcome(OK, f"exit {r.rc}: {r.last}")


# ---------------------------------------------------------------- 7. summaries


def _fake_eval(folder: str, model: str, benchmarks: dict[str, float], corruption: str | None = None,
               severity: int = 1, **more) -> None:
    """A run folder as tools/eval.py writes it (config.yaml, results.json), with chosen numbers."""
    import yaml

    os.makedirs(folder, exist_ok=True)
    config = {"model": {"name": model}, "data": {"name": "+".join(benchmarks), "corruption": corruption,
                                                 "severity": severity, **more}}
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({b: {"mIoU": v, "paper_mIoU": None} for b, v in benchmarks.items()}, f)


def _csv(path: str) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@case("summarize", "a robustness sweep with an unfinished job lists it", "exit 0, the missing point listed",
      SUMMARIES)
def _(ctx: Ctx) -> Outcome:
    write_voc(ctx.p("voc"))
    args = [a for a in ctx.fx.eval_args() if not a.startswith("output=")]
    sweep, _ = ctx.tool("eval.py", "-m", *args, "corruption=clean,spatter_1,spatter_2", "hydra.sweep.dir=sweep",
                        allowed=["sweep/*", "sweep/*/*"])
    if sweep.rc != 0:
        return ctx.success(sweep)
    os.remove(ctx.p("sweep", "2", "results.json"))  # the job of spatter_2: stopped before its results
    r, _ = ctx.tool("summarize.py", "sweep", "--output", "sum")

    def check() -> str | None:
        for name in ("robustness.md", "summary.md"):
            text = open(ctx.p("sum", name)).read()
            if "sweep/2 (no results): corruption=spatter_2" not in text:
                return f"{name} does not list the missing job (sweep/2, corruption=spatter_2)"
        return None if "sweep/2 (no results)" in r.out else "the printed summary does not list it"

    return ctx.success(r, check)


@case("summarize", "robustness of one model on two benchmarks: rows apart", "exit 0, each run its own cell",
      SUMMARIES)
def _(ctx: Ctx) -> Outcome:
    numbers = {("voc", None): 60.0, ("context", None): 30.0, ("voc", 1): 50.0, ("context", 1): 20.0}
    for (bench, severity), miou in numbers.items():
        _fake_eval(ctx.p("runs", f"{bench}_{severity}"), "maskclip", {bench: miou},
                   "fog" if severity else None, severity or 1)
    r, _ = ctx.tool("summarize.py", "runs", "--output", "sum")

    def check() -> str | None:
        rows = {row["benchmark"]: row for row in _csv(ctx.p("sum", "robustness.csv"))}
        got = {b: (float(rows[b]["clean"]), float(rows[b]["severity 1"])) for b in ("voc", "context")}
        return None if got == {"voc": (60.0, 50.0), "context": (30.0, 20.0)} else f"robustness rows {got}"

    return ctx.success(r, check)


@case("summarize", "two runs of one point: neither written over the other", "exit 0, the second named",
      SUMMARIES)
def _(ctx: Ctx) -> Outcome:
    _fake_eval(ctx.p("runs", "a"), "maskclip", {"voc": 40.0}, "fog", 1)
    _fake_eval(ctx.p("runs", "b"), "maskclip", {"voc": 45.0}, "fog", 1)
    r, _ = ctx.tool("summarize.py", "runs", "--output", "sum")

    def check() -> str | None:
        text = open(ctx.p("sum", "robustness.md")).read()
        row = _csv(ctx.p("sum", "robustness.csv"))[0]
        if float(row["severity 1"]) != 40.0:
            return f"the cell holds {row['severity 1']}, not the first run's 40.0"
        return None if "Runs not shown" in text and "b: " in text else "the second run is not named"

    return ctx.success(r, check)


@case("summarize", "the tables' arithmetic against numpy", "exit 0, means as computed independently", SUMMARIES)
def _(ctx: Ctx) -> Outcome:
    import numpy as np

    rng = np.random.default_rng(31)
    clean = {"voc": 70.0, "context": 40.0}
    _fake_eval(ctx.p("runs", "clean"), "maskclip", clean)
    scores = rng.uniform(10, 60, size=(5, 2)).round(3)
    for s in range(5):
        _fake_eval(ctx.p("runs", f"fog{s + 1}"), "maskclip", {"voc": scores[s, 0], "context": scores[s, 1]},
                   "fog", s + 1)
    _fake_eval(ctx.p("runs", "partial"), "maskclip", {"voc": 55.0}, "snow", 1)  # one benchmark of two
    r, _ = ctx.tool("summarize.py", "runs", "--output", "sum")

    def check() -> str | None:
        rows = {(row["benchmark"], row["corruption"]): row for row in _csv(ctx.p("sum", "robustness.csv"))}
        fog = rows[("voc+context", "fog")]
        per_severity = scores.mean(axis=1)  # each run: the mean over its two benchmarks
        for s in range(5):
            if abs(float(fog[f"severity {s + 1}"]) - per_severity[s]) > 1e-9:
                return f"severity {s + 1}: {fog[f'severity {s + 1}']}, numpy {per_severity[s]}"
        if abs(float(fog["mean"]) - per_severity.mean()) > 1e-9:  # the clean score is not one of the five
            return f"mean over severities {fog['mean']}, numpy {per_severity.mean()}"
        if abs(float(fog["clean"]) - np.mean(list(clean.values()))) > 1e-9:
            return f"clean {fog['clean']}"
        table = {row["run"]: row for row in _csv(ctx.p("sum", "summary.csv"))}
        if table["partial"]["average"] != "":  # a run without every benchmark has no average
            return f"'partial' averaged over the benchmarks it has: {table['partial']['average']}"
        return None

    return ctx.success(r, check)


@case("demo", "text cache: another template set is not served the cached embeddings", "labels of a run without cache",
      SUMMARIES)
def _(ctx: Ctx) -> Outcome:
    save_image(ctx.p("photo.png"), 40, 56)
    env = {"XDG_CACHE_HOME": ctx.p("cache")}
    first, _ = ctx.tool("demo.py", *ctx.fx.demo_args(output="out1"), "model.maskclip.templates=imagenet80", env=env,
                        allowed=["cache/*", "cache/*/*", "cache/*/*/*"])
    if first.rc != 0:
        return ctx.success(first)
    cached, _ = ctx.tool("demo.py", *ctx.fx.demo_args(output="out2"), "model.maskclip.templates=none", env=env,
                         allowed=["cache/*", "cache/*/*", "cache/*/*/*"])
    plain, _ = ctx.tool("demo.py", *ctx.fx.demo_args(output="out3"), "model.maskclip.templates=none",
                        "model.text_cache=null")

    def check() -> str | None:
        import numpy as np
        from PIL import Image

        a = np.asarray(Image.open(ctx.p("out2", "photo_labels.png")))
        b = np.asarray(Image.open(ctx.p("out3", "photo_labels.png")))
        return None if np.array_equal(a, b) else "labels with a warm cache differ from labels without one"

    verdict = ctx.success(plain)
    return verdict if verdict.klass != OK else ctx.success(cached, check)


# ---------------------------------------------------------------- 8. a target scored with another model's text


@case("eval", "model=target without model.clip: the recorded CLIP", "exit 0, numpy mIoU", TARGET)
def _(ctx: Ctx) -> Outcome:
    ids = write_voc(ctx.p("voc"), border=False)
    run = ctx.fx.copy_run(ctx, ctx.fx.target_run())
    args = [a for a in ctx.fx.eval_args() if not a.startswith("model.")]
    r, _ = ctx.tool("eval.py", *args, "model=target", f"model.checkpoint={run}/last.pt", "save_predictions=true")
    return ctx.success(r, lambda: miou_problem(ctx.p("out"), ctx.p("voc"), ids))


@case("eval", "model=target with another CLIP", "error naming model.clip and model.other_clip", TARGET)
def _(ctx: Ctx) -> Outcome:
    write_voc(ctx.p("voc"))
    run = ctx.fx.copy_run(ctx, ctx.fx.target_run())
    args = [a for a in ctx.fx.eval_args() if not a.startswith("model.")]
    r, created = ctx.tool("eval.py", *args, "model=target", f"model.checkpoint={run}/last.pt",
                          f"model.clip.name={ctx.fx.clip_json}", "model.clip.pretrained=null")
    return ctx.error(r, "model.clip", "model.other_clip=true", created=created)


@case("eval", "model=target with another CLIP and model.other_clip=true", "exit 0, a warning", TARGET)
def _(ctx: Ctx) -> Outcome:
    write_voc(ctx.p("voc"))
    run = ctx.fx.copy_run(ctx, ctx.fx.target_run())
    args = [a for a in ctx.fx.eval_args() if not a.startswith("model.")]
    r, _ = ctx.tool("eval.py", *args, "model=target", f"model.checkpoint={run}/last.pt",
                    f"model.clip.name={ctx.fx.clip_json}", "model.clip.pretrained=null", "model.other_clip=true")
    return ctx.success(r, lambda: None if "model.other_clip=true" in r.out + r.err else "no warning")


@case("train_target", "the printed evaluate command runs as printed", "exit 0, results.json", TARGET)
def _(ctx: Ctx) -> Outcome:
    write_voc(ctx.p("data", "VOCdevkit", "VOC2012"), split="train")
    write_voc(ctx.p("data", "VOCdevkit", "VOC2012"), split="val")
    args = [a for a in ctx.fx.target_args() if not a.startswith(("train.benchmark=", "train.data=",
                                                                  "train.vocabulary="))]
    first, _ = ctx.tool("train_target.py", *args, "train.benchmark=voc20", "train.iterations=2",
                        allowed=["run/*", "run/*/*"])
    if first.rc != 0:
        return ctx.success(first)
    lines = [ln for ln in (first.out + first.err).splitlines() if "(evaluate: " in ln]
    if not lines:
        return Outcome(WRONG, "no evaluate command printed", first.last)
    command = lines[-1].split("(evaluate: ", 1)[1].rstrip(")")
    argv = shlex.split(command)
    if argv[:2] != ["python", "tools/eval.py"] or not any(a.startswith("data=") for a in argv):
        return Outcome(WRONG, f"not a command of tools/eval.py with data=: {command}")
    r = run_command([sys.executable, os.path.join(TOOLS, "eval.py"), *argv[2:]], cwd=ctx.dir, env=ctx.fx.env(),
                    timeout=600)  # as printed (its results go to outputs/eval/<time>)
    ctx.procs.append(r)

    def check() -> str | None:
        found = [os.path.join(top, "results.json") for top, _, names in os.walk(ctx.p("outputs"))
                 if "results.json" in names]
        if len(found) != 1:
            return f"{len(found)} results.json written"
        return None if "voc20" in json.load(open(found[0])) else "results.json holds no voc20"

    return ctx.success(r, check)
