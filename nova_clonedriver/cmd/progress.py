"""Progress display of nova-clone: short lines on stderr while a long
operation runs. stdout carries only the result, so it stays parseable."""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import logging
import threading
import time
from typing import TextIO


class Progress:
    """Writes one line per step to ``stream``; does nothing when ``stream``
    is None (progress off: stderr is no terminal and --progress not given)."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def __call__(self, message: str) -> None:
        if self._stream is None:
            return
        with self._lock:
            self._stream.write(message + "\n")
            self._stream.flush()

    @contextlib.contextmanager
    def echo_logs(self, prefix: str, logger_name: str = "nova_clonedriver") -> Iterator[None]:
        """Meanwhile, show the INFO messages of ``logger_name`` (the engine
        says when a snapshot is taken, a clone runs, a clone is destroyed)
        as progress lines, without the log's timestamps. Warnings are left
        to the log."""
        if self._stream is None:
            yield
            return
        handler = _EchoHandler(self, prefix)
        logger = logging.getLogger(logger_name)
        logger.addHandler(handler)
        try:
            yield
        finally:
            logger.removeHandler(handler)


class Stopwatch:
    def __init__(self) -> None:
        self._started = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self._started


class _EchoHandler(logging.Handler):
    def __init__(self, progress: Progress, prefix: str) -> None:
        super().__init__(logging.INFO)
        self._progress = progress
        self._prefix = prefix

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            return  # the log's own handler shows those
        try:
            self._progress(self._prefix + record.getMessage())
        except Exception:
            self.handleError(record)
