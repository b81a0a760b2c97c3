"""SIGINT (Ctrl-C) and SIGTERM (what a cluster scheduler sends before it kills a job) end a run
the same way: training finishes the current iteration, saves it and says how to resume;
evaluation stops at once and writes no results. Exit codes follow the shell: 128 + the signal
(130 for SIGINT, 143 for SIGTERM).

Who handles a signal, from the start of a tool to its exit (one owner at every moment):

* a run (``StopRequest``): the first signal stops training after its iteration, a second at
  once; evaluation stops at the first (``stop_at_once``);
* a run folder being claimed or cleaned up (``deferred``): the signal waits for the end of the
  block, so no claim is left half made and no failed run half removed;
* outside a run, from the tool's start to the process's exit (``exit_on_signal``, installed by
  the tools' ``launch``): the process ends at once with 128 + the signal and at most one line,
  never a ``KeyboardInterrupt`` traceback from whatever code (tqdm's finalizers, the interpreter's
  exit) the signal lands in; once the interpreter's exit has begun, a signal is ignored (the
  process is ending with its own exit code).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import ClassVar

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal. ``exit_code`` is 128 + the signal number.

    Attributes:
        signum: the signal.
        run_dir, iteration: for a training run, its folder and the last saved iteration (else None).
    """

    def __init__(self, signum: int, run_dir: str | None = None, iteration: int | None = None) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum, self.run_dir, self.iteration = signum, run_dir, iteration

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """While active, SIGINT and SIGTERM set ``signum`` (the loop stops after its current step
    and saves); a second signal raises ``Interrupted`` at once. With ``immediate``, the first
    signal raises. Outside the main thread signals keep their default behaviour.

    An exception raised by a signal handler can land where Python swallows it (a finalizer, the
    logging module's lock release: "Exception ignored in ..."), so a signal that raises is also
    kept in ``StopRequest.pending`` (the process's, as signals are), and long loops call
    ``raise_if_stopped`` between steps."""

    pending: ClassVar[int | None] = None  # a signal that raised, not yet handled

    def __init__(self, *, immediate: bool = False) -> None:
        self.immediate = immediate
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopRequest:
        try:
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread
            self._previous = {}
        self._hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        return self

    def _unraisable(self, unraisable) -> None:
        """An ``Interrupted`` swallowed where it landed is not shown (``raise_if_stopped`` raises it
        again where it can be handled); anything else is reported as Python would."""
        if not isinstance(unraisable.exc_value, Interrupted):
            self._hook(unraisable)

    def _handle(self, signum: int, frame) -> None:
        if self.immediate or self.signum is not None:
            StopRequest.pending = signum
            raise Interrupted(signum)
        self.signum = signum
        log.warning("%s: stopping after this iteration (again to stop at once)", signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        sys.unraisablehook = self._hook


def interruption(e: BaseException) -> Interrupted | None:
    """The ``Interrupted`` behind ``e``: ``e`` itself, or one that ``e`` replaced (in its chain of
    causes and contexts), else None. A signal lands in any code: where a library's clean-up (a
    ``finally``) fails on the half-done state the signal left behind (OmegaConf: "'NoneType' object
    has no attribute '_invalidate_flags_cache'"), its error replaces the ``Interrupted`` and would
    be reported as an error naming a key or a file that is not at fault."""
    todo, seen = [e], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, Interrupted):
            return e
        seen.add(id(e))
        todo += [e.__cause__, e.__context__]
    return None


def raise_if_stopped() -> None:
    """Raise ``Interrupted`` for a signal whose exception was swallowed where it landed."""
    if StopRequest.pending is not None:
        raise Interrupted(StopRequest.pending)


def resume_command(run_dir: str) -> str:
    """The command that continues the training run in ``run_dir``, with the tool that runs now."""
    tool = f"tools/{os.path.basename(sys.argv[0])}" if sys.argv and sys.argv[0].endswith(".py") else "tools/train.py"
    return f"python {tool} train.resume={run_dir}"


@contextlib.contextmanager
def deferred(deliver: bool = True) -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (a run folder claimed or cleaned up), then go to
    the handler that was in place (``deliver``; else they are dropped: the process is already
    stopping). Outside the main thread: no change."""
    held: list[int] = []
    try:
        previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in held[:1] if deliver else ():
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


class LastLine:
    """Whether the process's last line (an error, an interruption) was printed (``announce``): a
    signal after it ends the process without another (the process's, as signals are)."""

    printed: ClassVar[bool] = False


def announce(line: str) -> None:
    """Print the process's last line on stderr; a signal after it ends the process without
    another line (``exit_on_signal``)."""
    LastLine.printed = True
    print(line, file=sys.stderr, flush=True)


def exit_on_signal() -> None:
    """From now until the process exits, SIGINT and SIGTERM outside a run end it at once: exit code
    128 + the signal, one line (none if ``announce`` printed the last one already), no traceback
    and no finalizer run (tqdm's, the interpreter's). A run installs its own handlers over these
    and puts these back when it ends. For the tools' main process only (``cli.launch``).

    From the ``atexit`` callbacks of Python's exit on, they are ignored: the process is ending with
    its own exit code already. The interpreter then resets every handler of Python's to the
    default before it tears its modules down (slow with torch loaded), so a signal there (a second
    Ctrl-C after the one-line message) would kill the process by the signal, not exit 128 + it."""
    for s in SIGNALS:
        signal.signal(s, _exit_now)
    atexit.register(ignore_signals)


def _exit_now(signum: int, frame) -> None:
    if not LastLine.printed:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"interrupted ({signal.Signals(signum).name}): stopped\n")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(128 + signum)


def handled(e: Interrupted) -> Interrupted:
    """Mark the signal of ``e`` as acted upon (the next run in this process starts clean)."""
    StopRequest.pending = None
    return e


def ignore_signals(_worker_id: int = 0) -> None:
    """For loader processes: SIGINT and SIGTERM are the main process's to handle (it stops
    them); without this, each worker prints its own KeyboardInterrupt traceback."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


@contextlib.contextmanager
def stop_at_once() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` in the block (evaluation)."""
    with StopRequest(immediate=True):
        yield
