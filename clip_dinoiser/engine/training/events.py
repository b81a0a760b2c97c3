"""TensorBoard event files of a training run, written in the training process through the one
writer of files (``files.append_atomic``), not by TensorBoard's own writer.

TensorBoard's ``SummaryWriter`` writes from a thread of its own: a full disk there prints a
thread's traceback and is raised again at some later call. Here each ``add`` appends whole
records (a failure is one line naming the file, and the file is cut back to its last whole
record). The format is TensorBoard's: a file ``events.out.tfevents.<time>.<host>.<pid>`` of
length-prefixed, CRC-checked ``Event`` protocol buffers (``RecordWriter``), starting with the
file version and, on resume, a ``SessionLog.START`` at the first new step, which makes
TensorBoard drop the older file's points from that step on (``SummaryWriter(purge_step=...)``).
Needs the ``tensorboard`` package (optional: ``EventFile.open`` returns None without it).
"""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Mapping

from ...files import append_atomic


class EventFile:
    """One event file; ``add(step, scalars)`` appends a step's scalars."""

    def __init__(self, path: str, purge_step: int | None = None) -> None:
        from tensorboard.compat.proto import event_pb2

        self.path = path
        self._event_pb2 = event_pb2
        first = [event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")]
        if purge_step is not None:
            first.append(event_pb2.Event(wall_time=time.time(), step=purge_step,
                                         session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        self._append(first)

    @classmethod
    def open(cls, folder: str, purge_step: int | None = None) -> EventFile | None:
        """A new event file in ``folder`` (made if missing), or None without ``tensorboard``."""
        try:
            import tensorboard.compat.proto.event_pb2  # noqa: F401
        except ImportError:
            return None
        os.makedirs(folder, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        return cls(os.path.join(folder, name), purge_step)

    def add(self, rows: list[tuple[int, Mapping[str, float]]]) -> None:
        """Append the scalars of each (step, {tag: value}) row, all of them or none."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        now = time.time()
        self._append([self._event_pb2.Event(wall_time=now, step=step, summary=Summary(
            value=[Summary.Value(tag=tag, simple_value=float(value)) for tag, value in scalars.items()]))
                      for step, scalars in rows])

    def _append(self, events: list) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        buffer = io.BytesIO()
        writer = RecordWriter(buffer)
        for event in events:
            writer.write(event.SerializeToString())
        append_atomic(self.path, buffer.getvalue())
