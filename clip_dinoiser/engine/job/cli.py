"""Helpers for the hydra entry points in ``tools/``: device choice and one-line errors."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from ...config import check_switches, config_error
from ...errors import UserError
from .signals import Interrupted, announce, exit_on_signal, handled, interruption, resume_command, stop_at_once

log = logging.getLogger(__name__)

# Errors a user causes: a setting, a file or a dataset we reject (UserError), the file system
# (a missing file, permissions, a full disk). Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, UserError)


def multirun_dirs() -> tuple[str, str] | None:
    """In a hydra multirun (``-m``): (this job's own folder, the sweep's folder); else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return hydra_cfg.runtime.output_dir, hydra_cfg.sweep.dir


def one_line(e: BaseException) -> str:
    """The message of ``e`` in one line. An exception re-raised from a DataLoader worker carries
    the worker's traceback; its last line holds the original message (with the file's path)."""
    text = str(e)
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1].strip()
        text = last.split(": ", 1)[1] if ": " in last else last
    if not text:
        return type(e).__name__
    return text.splitlines()[0]


def user_errors_as_one_line(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` with SIGINT and SIGTERM raising ``Interrupted`` (a training loop takes them over
    to finish its iteration); user errors become ``error: <message>`` on stderr and exit code 2,
    a signal one line and exit code 128 + the signal, also where the code it landed in failed on
    the half-done state and raised its own error in place of the ``Interrupted``."""
    from omegaconf.errors import OmegaConfBaseException

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with stop_at_once():
                return fn(*args, **kwargs)
        except BaseException as e:
            stopped = interruption(e)  # also one that the error of the code the signal landed in replaced
            if stopped is not None:
                announce(interrupted_message(handled(stopped)))
                sys.exit(stopped.exit_code)
            if not isinstance(e, (*USER_ERRORS, OmegaConfBaseException)):
                raise
            announce(f"error: {one_line(config_error(e) if isinstance(e, OmegaConfBaseException) else e)}")
            sys.exit(2)

    return wrapper


_TOOL_FRAME = user_errors_as_one_line(lambda: None).__code__  # the code of every tool's run wrapper


def interrupted_message(e: Interrupted) -> str:
    """What was kept when a run was stopped by a signal, and how to go on."""
    if e.run_dir is None:
        return f"interrupted ({e.name}): stopped, no results written"
    if e.iteration is None:
        return (f"interrupted ({e.name}) before an iteration could be saved; {resume_command(e.run_dir)} "
                "continues from its newest checkpoint, if any")
    return f"interrupted ({e.name}): iteration {e.iteration} saved; continue with {resume_command(e.run_dir)}"


def main_process() -> None:
    """What every tool's ``__main__`` does first: signals outside a run end the process in one line
    (``signals.exit_on_signal``), from now until it exits."""
    exit_on_signal()


def launch(main: Callable[[], Any], *, schema: type | None = None, groups: dict[str, str] | None = None) -> None:
    """Run a ``hydra.main`` entry point. A command line that does not fit the typed configs (an
    unknown key, a wrong type) is reported in one line naming the key (and the valid keys), exit
    code 2. ``--help`` / ``-h`` lists the tool's keys (``schema``) with their defaults and
    comments, and its config ``groups`` (group -> default option)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if schema is not None and ("--help" in sys.argv[1:] or "-h" in sys.argv[1:]):
        from .help import tool_help

        script = os.path.abspath(sys.argv[0])
        doc = (sys.modules["__main__"].__doc__ or "").strip()
        print(tool_help(os.path.splitext(os.path.basename(script))[0], doc, schema, groups or {},
                        os.path.join(os.path.dirname(os.path.dirname(script)), "configs")))
        sys.exit(0)

    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # hydra raises its errors instead of printing them
    config_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0]))), "configs")
    if schema is not None:
        from .hints import check_spelling

        try:
            check_switches(sys.argv[1:], schema)
            tool = f"tools/{os.path.basename(sys.argv[0])}"
            check_spelling(sys.argv[1:], schema, groups or {}, config_dir, tool)  # common slips: the right spelling
        except UserError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:
        from .hints import composition_error

        cause = e if isinstance(e, OmegaConfBaseException) else e.__cause__
        message = config_error(cause) if isinstance(cause, OmegaConfBaseException) else (
            composition_error(e, config_dir) or one_line(e))
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # hydra failing on the command line itself: before the tool's code ran
        if _raised_in_tool(e):
            raise
        print(f"error: cannot apply the command line {' '.join(sys.argv[1:])[:300]}: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


def _raised_in_tool(e: BaseException) -> bool:
    """Whether ``e`` came from inside a tool's ``run`` (a bug of ours, which keeps its traceback),
    not from hydra composing the command line."""
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is _TOOL_FRAME:
            return True
        tb = tb.tb_next
    return False


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"device={name}: unknown device (auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is available (use device=cpu)")
    return device
