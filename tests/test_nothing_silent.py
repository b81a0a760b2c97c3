"""Nothing silent, round three (issue #31): one mechanism per class of fault, each pinned by a test
that fails when the mechanism is broken (the planted bug each one catches is named in its
docstring). The fault battery (``tests/faults/``) drives the same faults through the tools.

1. the one writer of files (``files.atomic_file``): a full disk, a quota or a read-only file system
   is one line naming the file and the cause, nothing half-written; the claim of a run folder
   written whole or not at all, a stale or empty claim taken over;
2. the same writer gives files the mode the umask gives;
3. ``engine/job/inputs.py``: what a run reads is recorded, a resume after a change refused;
4. ``values.validate`` / ``checked_benchmarks``: every key checked under its full name first;
5. ``resume.check_run_config``, ``files.check_output_dir``, ``hints``: the wrong tool or a broken
   folder in one line that says what to do;
6. ``signals``: a second Ctrl-C stops at once; claims and clean-ups finish first;
7. the summaries' arithmetic against hand-computed numbers, their gaps listed, the text cache's key;
8. ``models.build.recorded_clip``: a target scored with the CLIP it was trained against.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import stat
import time

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from clip_dinoiser import files as files_module
from clip_dinoiser.errors import ConfigError, UserError
from clip_dinoiser.files import WriteError, append_atomic, save_atomic, write_atomic


@pytest.fixture()
def umask():
    """Set the process's umask for a test, then put the old one back."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


class FailingDisk:
    """The files opened by the one writer fail as a full disk (or a quota, or a read-only file
    system) fails: ``write`` raises ``OSError(code)`` once ``after`` bytes went through."""

    def __init__(self, monkeypatch, code: int = errno.ENOSPC, after: int = 0) -> None:
        real = os.fdopen
        self.code, self.after = code, after

        def fdopen(fd, mode="r", *args, **kwargs):
            return _Failing(real(fd, mode, *args, **kwargs), self)

        monkeypatch.setattr(files_module.os, "fdopen", fdopen)


class _Failing:
    def __init__(self, file, disk: FailingDisk) -> None:
        self._file, self._disk, self._written = file, disk, 0

    def write(self, data):
        self._written += len(data)
        if self._written > self._disk.after:
            raise OSError(self._disk.code, os.strerror(self._disk.code))
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def leftovers(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith((".tmp", ".part")))


# ---------------------------------------------------------------- 1. full disk, quota, read-only


@pytest.mark.parametrize(("code", "cause"), [(errno.ENOSPC, "no space left on device"),
                                             (errno.EDQUOT, "disk quota exceeded"),
                                             (errno.EROFS, "read-only file system")])
def test_a_failed_save_names_the_file_and_the_cause_and_leaves_the_old_file(tmp_path, monkeypatch, code, cause):
    """Planted bug caught: ``atomic_file`` re-raising what the writer raised (torch.save's
    ``RuntimeError: [enforce fail at inline_container.cc]``), or not recording the file's error."""
    path = str(tmp_path / "iter_0000004.pt")
    save_atomic({"w": torch.ones(3)}, path)
    before = open(path, "rb").read()
    FailingDisk(monkeypatch, code, after=100)
    with pytest.raises(WriteError) as info:
        save_atomic({"w": torch.zeros(100_000)}, path)
    message = str(info.value)
    assert message.startswith(f"cannot write {path}: {cause}") and "\n" not in message
    assert info.value.errno == code
    assert open(path, "rb").read() == before and leftovers(tmp_path) == []  # nothing half-written
    with pytest.raises(WriteError, match="cannot write .*results.json: no space|cannot write .*results.json"):
        write_atomic(str(tmp_path / "results.json"), lambda f: f.write("{}" * 100))
    assert not os.path.exists(tmp_path / "results.json") and leftovers(tmp_path) == []


def test_a_failed_append_is_cut_back_to_the_last_whole_record(tmp_path, monkeypatch):
    """``append_atomic`` (metrics.jsonl, train.log, TensorBoard events). Planted bug caught: no
    ``ftruncate`` on failure (half a JSON line left at the end)."""
    path = str(tmp_path / "metrics.jsonl")
    append_atomic(path, b'{"iteration": 1}\n')
    real_write = os.write
    calls = []

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}") != path:  # any other file of the process: as it is
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[:5])  # part of the record, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files_module.os, "write", write)
    with pytest.raises(WriteError, match=f"cannot write {path}: no space left on device"):
        append_atomic(path, b'{"iteration": 2}\n')
    monkeypatch.undo()
    assert open(path).read() == '{"iteration": 1}\n'


def test_a_claim_is_written_whole_or_not_at_all_and_a_stale_or_empty_one_is_taken_over(tmp_path, monkeypatch,
                                                                                        caplog):
    """``runs.write_claim`` / ``RunFolder._take_over_stale``. Planted bugs caught: a claim created
    with ``O_EXCL`` and then written (a full disk leaves it empty, blocking every rerun as
    "being written by process  on ?"); an empty claim refused instead of taken over."""
    from clip_dinoiser.engine.job.runs import MARKER, RunFolder

    out = tmp_path / "out"
    disk_full = pytest.MonkeyPatch()
    FailingDisk(disk_full)
    with pytest.raises(WriteError, match=f"cannot write {out}/{MARKER}: no space left on device"):
        RunFolder(str(out), ["results.json"], key="output").claim()
    disk_full.undo()
    assert not out.exists()  # the folder it made goes again: nothing blocks the rerun

    out.mkdir()
    (out / MARKER).write_text("")  # left by an older version on a full disk
    os.utime(out / MARKER, (time.time() - 60, time.time() - 60))
    with caplog.at_level(logging.WARNING):
        run = RunFolder(str(out), ["results.json"], key="output").claim()
    assert "taking over .in_use: an empty claim" in caplog.text
    assert (out / MARKER).read_text().split()[0] == str(os.getpid())
    run.release()
    (out / MARKER).write_text(f"999999999 {os.uname().nodename} 2026-01-01T00:00:00 tools/eval.py\n")
    RunFolder(str(out), ["results.json"], key="output").claim().release()  # its process is gone
    (out / MARKER).write_text(f"{os.getpid()} {os.uname().nodename} 2026-01-01T00:00:00 tools/eval.py\n")
    with pytest.raises(FileExistsError, match=f"is being written by process {os.getpid()}"):
        RunFolder(str(out), ["results.json"], key="output").claim()


def test_a_full_disk_at_a_checkpoint_names_it_and_the_checkpoint_kept(tmp_path, monkeypatch):
    """The one training loop through the writer: a checkpoint that cannot be written is one line
    naming it, the newest checkpoint kept and the resume command (the run's earlier one intact)."""
    run, task, sampler, tcfg = tiny_run(tmp_path, iterations=6)
    from clip_dinoiser.engine.training import loop

    real = loop.save_atomic

    def save(obj, path):
        if path.endswith("iter_0000004.pt"):
            with pytest.MonkeyPatch.context() as mp:
                FailingDisk(mp)
                return real(obj, path)
        return real(obj, path)

    monkeypatch.setattr(loop, "save_atomic", save)
    with pytest.raises(WriteError) as info:
        loop.run_task(task, sampler, tcfg, run, torch.device("cpu"), 0, 1)
    assert str(info.value).startswith(f"cannot write {run.path}/checkpoints/iter_0000004.pt: no space left")
    assert "iteration 2 is the newest checkpoint kept" in str(info.value) and "train.resume=" in str(info.value)
    assert sorted(os.listdir(os.path.join(run.path, "checkpoints"))) == ["iter_0000002.pt"]


# ---------------------------------------------------------------- 2. the umask's mode


def test_files_get_the_mode_the_umask_gives(tmp_path, umask):
    """Planted bug caught: ``atomic_file`` without its ``fchmod`` (``mkstemp``'s private 0600:
    a colleague's tools/summarize.py gets Permission denied on a shared cluster)."""
    from clip_dinoiser.engine.job.runs import MARKER, RunFolder

    for mask in (0o022, 0o027, 0o002):
        umask(mask)
        folder = tmp_path / f"m{mask:o}"
        run = RunFolder(str(folder), ["results.json"], key="output").claim()
        run.write_json("results.json", {})
        save_atomic({"w": torch.ones(1)}, str(folder / "last.pt"))
        append_atomic(str(folder / "metrics.jsonl"), b"{}\n")
        with open(folder / "plain.txt", "w") as f:  # what any other file gets
            f.write("x")
        expected = stat.S_IMODE(os.stat(folder / "plain.txt").st_mode)
        assert expected == 0o666 & ~mask
        for name in ("results.json", "last.pt", "metrics.jsonl", MARKER):
            assert stat.S_IMODE(os.stat(folder / name).st_mode) == expected, (name, oct(mask))
        run.release()


# ---------------------------------------------------------------- a tiny task for the one training loop


class Points(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, item):
        index, seed = item
        return torch.tensor([float(index), 1.0])


class TinyTask:
    """A task of the one training loop (``loop.Task``) that learns a line; ``on_step(i)`` runs
    inside iteration i (1-based); ``inputs``: what it says it reads."""

    def __init__(self, inputs=None, on_step=None) -> None:
        torch.manual_seed(0)
        self.module = nn.Linear(2, 1)
        self.on_step, self._inputs, self.step = on_step, inputs or {}, 0

    def make_optimizer(self):
        optimizer = torch.optim.SGD(self.module.parameters(), lr=0.01)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)

    def dataset(self):
        return Points()

    def losses(self, batch, module):
        self.step += 1
        if self.on_step:
            self.on_step(self.step)
        return module(batch).pow(2).mean(), {}

    def prepare(self, start):
        self.step = start

    def save_final(self, path):
        save_atomic(self.module.state_dict(), path)
        return f"saved {path}"

    def inputs(self):
        return self._inputs


def tiny_run(tmp_path, *, iterations: int = 6, resume: bool = False, inputs=None, on_step=None):
    from clip_dinoiser.data.train_images import ResumableBatchSampler
    from clip_dinoiser.engine.job.runs import RunFolder
    from clip_dinoiser.engine.training.loop import CHECKPOINTS, RUN_FILES

    folder = str(tmp_path / "run")
    run = RunFolder(folder, RUN_FILES, key="train.resume" if resume else "train.output", resume=resume).claim()
    os.makedirs(os.path.join(folder, CHECKPOINTS), exist_ok=True)
    tcfg = {"resume": folder if resume else None, "output": folder, "keep_checkpoints": 5, "save_every": 2,
            "num_workers": 0, "log_every": 50}
    sampler = ResumableBatchSampler(8, 4, 100, 0, iterations=iterations)
    return run, TinyTask(inputs, on_step), sampler, tcfg


# ---------------------------------------------------------------- 3. inputs that change under a resume


def test_a_resume_refuses_a_changed_input_and_never_says_resuming(tmp_path, caplog):
    """``inputs.json`` written by a new run, compared on resume before the checkpoint is loaded.
    Planted bugs caught: the comparison skipped, or made on sizes only (the vocabulary below keeps
    its size); "resuming ..." logged before the refusal."""
    from clip_dinoiser.engine.job.inputs import file_input, files_input
    from clip_dinoiser.engine.training.loop import run_task

    vocabulary = tmp_path / "classes.txt"
    vocabulary.write_text("cat\ndog\n")
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.png").write_bytes(b"x" * (10 + i))

    def inputs():
        return {"train.vocabulary": file_input(str(vocabulary)),
                "train.data": files_input(sorted(str(p) for p in images.iterdir()))}

    run, task, sampler, tcfg = tiny_run(tmp_path, iterations=2, inputs=inputs())
    run_task(task, sampler, tcfg, run, torch.device("cpu"), 0, 1)
    run.release()
    recorded = json.loads((tmp_path / "run" / "inputs.json").read_text())
    assert recorded["train.vocabulary"]["size"] == 8 and recorded["train.data"]["count"] == 3

    vocabulary.write_text("cow\ndog\n")  # same size, other classes
    run, task, sampler, tcfg = tiny_run(tmp_path, iterations=4, resume=True, inputs=inputs())
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(UserError) as info:
        run_task(task, sampler, tcfg, run, torch.device("cpu"), 0, 1)
    assert str(info.value).startswith(f"resuming {run.path}: the file {vocabulary} (train.vocabulary) changed since "
                                      "the run started (its content differs)")
    assert "resuming" not in caplog.text
    run.release()

    vocabulary.write_text("cat\ndog\n")
    (images / "3.png").write_bytes(b"new image")
    run, task, sampler, tcfg = tiny_run(tmp_path, iterations=4, resume=True, inputs=inputs())
    with pytest.raises(UserError, match=r"the image list .*imgs \(train.data\) changed since the run started \(3 "
                                        r"files then, 4 now\)"):
        run_task(task, sampler, tcfg, run, torch.device("cpu"), 0, 1)
    run.release()

    os.remove(images / "3.png")
    run, task, sampler, tcfg = tiny_run(tmp_path, iterations=4, resume=True, inputs=inputs())
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert run_task(task, sampler, tcfg, run, torch.device("cpu"), 0, 1)
    assert f"resuming {run.path} from iteration 2" in caplog.text
    run.release()


def test_a_refused_schedule_never_says_resuming(tmp_path, caplog):
    """Planted bug caught: "resuming ... from iteration N" logged by ``restore`` before
    ``check_schedule`` refuses a run shortened below its checkpoint."""
    from clip_dinoiser.engine.training.loop import run_task

    run, task, sampler, tcfg = tiny_run(tmp_path, iterations=4)
    run_task(task, sampler, tcfg, run, torch.device("cpu"), 0, 1)
    run.release()
    run, task, sampler, tcfg = tiny_run(tmp_path, iterations=2, resume=True)
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(ConfigError, match="cannot be shortened"):
        run_task(task, sampler, tcfg, run, torch.device("cpu"), 0, 1)
    assert "resuming" not in caplog.text
    run.release()


# ---------------------------------------------------------------- 4. every key, its full name, first


def test_every_key_with_a_closed_set_of_values_is_checked_under_its_full_name():
    """``values.validate`` over the tools' whole schemas (the training tools parse their command
    against it first). Planted bug caught: ``DataConfig.corruption`` (or any precision) without
    its ``choice``: eval.data.corruption=bogus in a training command accepted, refused only after
    the training, as ``corruption=``."""
    from clip_dinoiser.config import EvalConfig, TrainConfig, TrainTargetConfig, parse

    train = {"model": {}, "teachers": {}, "train": {"data": "x", "output": "o"}}
    target = {"annotator": {}, "train": {"output": "o"}}
    for schema, base in ((TrainConfig, train), (TrainTargetConfig, target), (EvalConfig,
                                                                          {"model": {}, "data": {}, "output": "o"})):
        node = "eval." if schema is not EvalConfig else ""
        for key, value in ((f"{node}data.corruption", "bogus"), (f"{node}data.vocabulary_set", "bogus"),
                           (f"{node}precision", "fp8"), ("precision", "fp8"), (f"{node}slide.mode", "bogus")):
            cfg = json.loads(json.dumps(base))
            parent = cfg
            for part in key.split(".")[:-1]:
                parent = parent.setdefault(part, {})
            parent[key.split(".")[-1]] = value
            with pytest.raises(ConfigError) as info:
                parse(schema, cfg, "")
            assert str(info.value).startswith(f"{key}={value}: unknown"), (schema.__name__, key, str(info.value))


def test_the_end_of_run_evaluation_is_checked_under_eval_data(tmp_path):
    """``checked_benchmarks(..., key="eval.data", datasets=False)``: the training tools' check of
    the evaluation they run at the end, before the first iteration (messages name eval.data.*)."""
    from clip_dinoiser.config import DataConfig, SlideConfig
    from clip_dinoiser.data.benchmarks import checked_benchmarks

    for data, message in ((DataConfig(name="bogus"), "eval.data.name=bogus: unknown benchmark"),
                          (DataConfig(names=["voc", "bogus"]), "eval.data.names=bogus: unknown benchmark"),
                          (DataConfig(vocabulary=str(tmp_path / "none.txt")), "(eval.data.vocabulary)")):
        with pytest.raises((UserError, FileNotFoundError)) as info:
            checked_benchmarks(data, SlideConfig(), "eval.data", datasets=False)
        assert message in str(info.value)
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(UserError, match="eval.data.vocabulary=.*three.txt names 3 classes; voc has 21"):
        checked_benchmarks(DataConfig(vocabulary=str(tmp_path / "three.txt")), SlideConfig(), "eval.data",
                           datasets=False)


# ---------------------------------------------------------------- 5. the wrong tool, a broken folder


def test_a_run_resumed_by_the_wrong_tool_or_lacking_settings_is_one_line():
    """``resume.check_run_config``. Planted bugs caught: ``made_by`` not telling the tools apart
    ("unknown key train.init"); ``missing_settings`` not recursing ("missing mandatory value: data")."""
    from clip_dinoiser.config import TrainConfig, TrainTargetConfig
    from clip_dinoiser.engine.job.resume import check_run_config

    heads = {"model": {}, "teachers": {}, "train": {"data": "imgs"}}
    target = {"annotator": {}, "target": {}, "train": {"benchmark": "voc20"}}
    evaluation = {"model": {}, "data": {"name": "voc"}, "slide": {}}
    check_run_config(heads, "run/config.yaml", TrainConfig, "tools/train.py")
    check_run_config(target, "run/config.yaml", TrainTargetConfig, "tools/train_target.py")
    with pytest.raises(UserError, match="^run was made by tools/train.py, not tools/train_target.py: resume it with "
                                        "python tools/train.py train.resume=run$"):
        check_run_config(heads, "run/config.yaml", TrainTargetConfig, "tools/train_target.py")
    with pytest.raises(UserError, match="^run was made by tools/train_target.py, not tools/train.py"):
        check_run_config(target, "run/config.yaml", TrainConfig, "tools/train.py")
    with pytest.raises(UserError, match="is an evaluation's run folder"):
        check_run_config(evaluation, "run/config.yaml", TrainConfig, "tools/train.py")
    with pytest.raises(UserError, match=r"^run/config.yaml lacks model, train.data: "):
        check_run_config({"teachers": {}, "train": {}}, "run/config.yaml", TrainConfig, "tools/train.py")


def test_an_output_that_is_a_dangling_link_or_a_link_loop_says_what_to_do(tmp_path):
    """``files.check_output_dir``, the check of every output. Planted bug caught: the walk up to the
    nearest existing folder with ``os.path.exists`` (which looks through links: a bare [Errno 17])."""
    from clip_dinoiser.files import check_output_dir

    os.symlink(str(tmp_path / "nowhere"), tmp_path / "dangling")
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    for given in ("dangling", "dangling/sub"):
        with pytest.raises(NotADirectoryError, match=f"output={tmp_path / given}: {tmp_path / 'dangling'} is a "
                                                     "symbolic link to .*nowhere, which does not exist: remove"):
            check_output_dir(str(tmp_path / given), "output")
    with pytest.raises(NotADirectoryError, match="is a symbolic link loop"):
        check_output_dir(str(tmp_path / "a"), "output")


def test_hydra_slips_that_need_quoting_or_an_extra_say_what_to_do():
    """``hints.check_spelling`` / ``hints.composition_error``."""
    from hydra.errors import HydraException

    from clip_dinoiser.config import TrainConfig
    from clip_dinoiser.engine.job.hints import check_spelling, composition_error

    config_dir = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")
    groups = {"model": "clip_dinoiser", "teachers": "paper"}
    with pytest.raises(UserError, match="^dir/run: settings are key=value; a value with a space is one argument, "
                                        "quoted for the shell: 'train.output=my dir/run'$"):
        check_spelling(["train.output=my", "dir/run"], TrainConfig, groups, config_dir)
    with pytest.raises(UserError, match="quote it for hydra inside the shell's quotes, 'train.output=\"my dir"):
        check_spelling(["train.output=my dir(1)/run"], TrainConfig, groups, config_dir)
    error = HydraException("In 'hydra/launcher/slurm': Could not load 'hydra/launcher/submitit_slurm'.")
    assert 'pip install -e ".[cluster]"' in str(composition_error(error, config_dir))


# ---------------------------------------------------------------- 6. signals


def test_a_second_signal_stops_the_iteration_under_way(tmp_path):
    """``StopRequest``: the first SIGINT lets the iteration finish and be saved, a second one stops
    at once (the iteration under way is lost, the last save stays). Planted bug caught: a second
    signal that waits for the iteration like the first (iteration 3 would be saved)."""
    from clip_dinoiser.engine.job.signals import Interrupted
    from clip_dinoiser.engine.training.loop import run_task

    def twice(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)

    run, task, sampler, tcfg = tiny_run(tmp_path, iterations=10, on_step=twice)
    with pytest.raises(Interrupted) as info:
        run_task(task, sampler, tcfg, run, torch.device("cpu"), 0, 1)
    run.release()
    assert info.value.iteration == 2 and info.value.signum == signal.SIGINT
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["iter_0000002.pt"]

    def once(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)

    run, task, sampler, tcfg = tiny_run(tmp_path / "b", iterations=10, on_step=once)
    with pytest.raises(Interrupted) as info:
        run_task(task, sampler, tcfg, run, torch.device("cpu"), 0, 1)
    run.release()
    assert info.value.iteration == 3  # the first signal: the iteration finishes and is saved


def test_signals_wait_for_a_claim_or_a_clean_up_to_finish():
    """``signals.deferred`` (``RunFolder.claim`` / ``release``): the signal acts when the block
    ends (or is dropped when the process is stopping already)."""
    from clip_dinoiser.engine.job.signals import Interrupted, deferred, handled, stop_at_once

    order = []
    with stop_at_once(), pytest.raises(Interrupted) as info:
        with deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            order.append("block finished")
    handled(info.value)  # acted upon: the next test starts clean
    assert order == ["block finished"]
    with stop_at_once():
        with deferred(deliver=False):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        order.append("dropped")
    assert order[-1] == "dropped"


def test_a_signal_replaced_by_the_error_of_the_code_it_landed_in_is_still_the_interruption(capsys):
    """``signals.interruption`` in the tools' wrapper: a signal lands in any code; a library's
    ``finally`` failing on the half-done state it left (OmegaConf during a merge: "error:
    train.ratio_range: 'NoneType' object has no attribute '_invalidate_flags_cache'", exit 2) is
    the interruption all the same. Planted bug caught: only an ``Interrupted`` itself recognised."""
    from clip_dinoiser.engine.job.cli import user_errors_as_one_line
    from clip_dinoiser.engine.job.signals import Interrupted

    class Half:  # a library's node, half made when the signal came
        child = None

    @user_errors_as_one_line
    def merge():
        try:
            try:
                raise Interrupted(signal.SIGINT)  # what the handler raises where the signal lands
            finally:
                Half.child.invalidate()  # the library's clean-up: AttributeError on None
        except AttributeError as e:
            raise ConfigError(f"train.ratio_range: {e}") from None  # the library's own error about it

    with pytest.raises(SystemExit) as stopped:
        merge()
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "interrupted (SIGINT): stopped, no results written\n"

    @user_errors_as_one_line
    def plain():
        raise ConfigError("train.ratio_range=[2,1]: the low end is above the high end")

    with pytest.raises(SystemExit) as stopped:
        plain()
    assert stopped.value.code == 2  # an error with no signal behind it stays the error


EXITING = """
import os, sys
from clip_dinoiser.engine.job.signals import announce, exit_on_signal


class TornDown:
    def __del__(self, write=os.write, read=os.read):  # runs while the interpreter tears __main__ down
        write(1, b"tearing down\\n")
        read(0, 1)  # until the test has sent its signal


exit_on_signal()
torn_down = TornDown()
announce("interrupted (SIGINT): stopped, no results written")
sys.exit(130)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_interpreter_exits_keeps_the_exit_code(tmp_path, signum):
    """``signals.exit_on_signal`` owns the signals until the process has exited: CPython resets its
    handlers to the default before tearing the modules down (slow with torch loaded), so without
    the handover to "ignored" a second Ctrl-C just after the one-line message killed the process
    by the signal (exit -2 in Python, not 130). Planted bug caught: ``exit_on_signal`` without it."""
    import subprocess
    import sys

    script = tmp_path / "exiting.py"
    script.write_text(EXITING)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdout.readline() == b"tearing down\n"
    proc.send_signal(signum)
    out, err = proc.communicate(b"x", timeout=60)  # the byte lets the teardown go on
    assert proc.returncode == 130, err.decode()[-2000:]
    assert err.decode() == "interrupted (SIGINT): stopped, no results written\n"


# ---------------------------------------------------------------- 7. summaries


def eval_run(folder: str, *, model: str = "maskclip", bench: dict | None = None, corruption: str | None = None,
             severity: int = 1, **settings):
    from clip_dinoiser.engine.reporting.summary import Run

    flat = {"model.name": model, "data.corruption": corruption, "data.severity": severity, **settings}
    results = {b: {"mIoU": v, "paper_mIoU": None} for b, v in (bench or {"voc": 50.0}).items()}
    return Run(folder, "eval", flat, results)


def test_the_robustness_table_against_hand_computed_numbers():
    """``summary.robustness_table``, pinned by numbers worked out by hand. Planted bugs caught: the
    clean score averaged in with the severities (mean 40.0, not 30.0); a run averaged over only
    the benchmarks it has (the context-less run's score 60.0, not "-"; a run whose Context score
    is null scored by its VOC score alone); a later run written over
    an earlier one's cell (VOC and Context runs of one model in one row)."""
    from clip_dinoiser.engine.reporting.summary import robustness_table, summary_rows

    runs = [eval_run("r/clean", bench={"voc": 90.0, "context": 70.0})]
    runs += [eval_run(f"r/fog{s}", corruption="fog", severity=s, bench={"voc": 10.0 * s + 10, "context": 10.0 * s - 10})
             for s in range(1, 6)]  # voc 20..60, context 0..40: per run the mean of the two, 10..50
    runs += [eval_run("r/snow1", corruption="snow", severity=1, bench={"voc": 60.0})]  # no context: no score
    runs += [eval_run("r/fog1_again", corruption="fog", severity=1, bench={"voc": 99.0, "context": 99.0})]
    runs += [eval_run("r/rain1", corruption="rain", severity=1, bench={"voc": 40.0, "context": None})]  # no score
    table = robustness_table(runs)
    fog = next(r for r in table.rows if r["corruption"] == "fog" and r["benchmark"] == "voc+context")
    assert [fog[f"severity {s}"] for s in range(1, 6)] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert fog["mean"] == 30.0 and fog["clean"] == 80.0
    rain = next(r for r in table.rows if r["corruption"] == "rain" and r["benchmark"] == "voc+context")
    assert rain["severity 1"] is None  # a benchmark without a score: no score, not voc's alone
    snow = next(r for r in table.rows if r["corruption"] == "snow")
    assert snow["benchmark"] == "voc" and snow["severity 1"] == 60.0 and snow["mean"] is None
    assert any(c.startswith("fog1_again: ") and c.endswith(", as fog1") for c in table.clashes)  # never written over
    assert "model=maskclip benchmark=voc clean" in table.missing  # the VOC-only runs have no clean run
    _, benchmarks, rows = summary_rows([eval_run("a", bench={"voc": 40.0, "context": 20.0}),
                                        eval_run("b", bench={"voc": 60.0})], {"a": "a", "b": "b"})
    assert benchmarks == ["voc", "context"]
    assert [r["average"] for r in rows[:2]] == [30.0, None]


def test_a_sweep_with_missing_points_lists_them(tmp_path):
    """``summary.missing_jobs`` expands hydra's multirun.yaml as hydra does (a glob over a config
    group included) and names each job without results. Planted bug caught: the summary built
    from the runs found only (one unfinished job's corruption vanishes without a word)."""
    import yaml

    from clip_dinoiser.engine.reporting.summary import missing_jobs

    configs = tmp_path / "configs" / "corruption"
    configs.mkdir(parents=True)
    for name in ("clean", "fog_1", "fog_2", "snow_1"):
        (configs / f"{name}.yaml").write_text("{}\n")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}"},
        "overrides": {"task": ["data=voc", "model=maskclip,clip_dinoiser", "corruption=glob(*_*)"]},
        "runtime": {"config_sources": [{"path": str(tmp_path / "configs"), "schema": "file", "provider": "main"}]}}}))
    for number in range(6):
        if number not in (2, 5):
            (sweep / str(number)).mkdir()
            (sweep / str(number) / "results.json").write_text("{}")
    (sweep / "2").mkdir()  # started, stopped
    assert missing_jobs([str(sweep)]) == [f"{sweep}/2 (no results): model=maskclip corruption=snow_1",
                                          f"{sweep}/5 (not started): model=clip_dinoiser corruption=snow_1"]


def test_the_text_cache_key_holds_the_templates(tmp_path):
    """``TextEmbeddingCache._path``. Planted bug caught: a key without the templates (the
    embeddings of one template set served for another)."""
    from clip_dinoiser.models.text_cache import TextEmbeddingCache

    cache = TextEmbeddingCache(str(tmp_path), "ViT-B-16|open_clip 3|tag:laion2b_s34b_b88k")
    cache.put(["a photo of a {}."], "cat", torch.ones(4))
    assert torch.equal(cache.get(["a photo of a {}."], "cat", 4), torch.ones(4))
    assert cache.get(["{}"], "cat", 4) is None
    assert cache.get(["a photo of a {}.", "a drawing of a {}."], "cat", 4) is None
    other = TextEmbeddingCache(str(tmp_path), "ViT-B-16|open_clip 3|tag:openai")
    assert other.get(["a photo of a {}."], "cat", 4) is None


# ---------------------------------------------------------------- 8. a target scored with its own text


def test_a_target_is_scored_with_the_clip_its_checkpoint_records(tmp_path, caplog, monkeypatch):
    """``build.recorded_clip``. Planted bug caught: another CLIP only warned about (a different
    classifier from the one trained, exit 0)."""
    from clip_dinoiser.config import CLIPConfig, ModelConfig
    from clip_dinoiser.models.build import RECORDED, recorded_clip

    last = str(tmp_path / "last.pt")
    weights = tmp_path / "clip.pt"
    weights.write_bytes(b"x")
    torch.save({"model_state_dict": {}, "target": {}, "clip": {"name": "RN50", "pretrained": str(weights)}}, last)

    def cfg(**clip):
        return ModelConfig(name="target", checkpoint=last,
                           clip=CLIPConfig(**{"name": RECORDED, "pretrained": RECORDED, **clip}))

    resolved = recorded_clip(cfg())
    assert (resolved.clip.name, resolved.clip.pretrained) == ("RN50", str(weights))
    monkeypatch.chdir(tmp_path)
    same = recorded_clip(cfg(name="RN50", pretrained="clip.pt"))  # the same file, named another way
    assert same.clip.pretrained == "clip.pt"
    with pytest.raises(ConfigError, match=r"^model.clip=ViT-B-16 / laion2b_s34b_b88k: .*last.pt was trained against "
                                          r"the class embeddings of CLIP RN50 / .*clip.pt \(recorded in it\)"):
        recorded_clip(cfg(name="ViT-B-16", pretrained="laion2b_s34b_b88k"))
    other = ModelConfig(name="target", checkpoint=last, other_clip=True,
                        clip=CLIPConfig(name="ViT-B-16", pretrained="laion2b_s34b_b88k"))
    with caplog.at_level(logging.WARNING):
        assert recorded_clip(other, warn=True).clip.name == "ViT-B-16"
    assert "model.other_clip=true" in caplog.text


def test_the_printed_evaluate_command_names_the_benchmark():
    """``target_train.eval_command``: the command MaskCLIP+ prints at its end runs as printed (the
    battery runs it). Planted bug caught: no ``data=`` (scored on VOC whatever it was trained on)."""
    from clip_dinoiser.engine.training.target_train import eval_command

    line = eval_command({"benchmark": "context59", "data": "/d/VOC2010", "vocabulary_set": "maskclip"}, "maskclip85",
                        "runs/a b/last.pt")
    assert line == ("python tools/eval.py model=target model.checkpoint='runs/a b/last.pt' data=context59 "
                    "data.root=/d/VOC2010 data.vocabulary_set=maskclip model.maskclip.templates=maskclip85")
