"""Log lines that a hostile or broken peer can trigger, at most one per key
and interval, so that a flood of them cannot fill the disk or hide the rest
of the log; the next line says how many were left out."""

from __future__ import annotations

import logging
import threading
import time

INTERVAL_S = 60.0
MAX_KEYS = 1024


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float = INTERVAL_S) -> None:
        self._logger = logger
        self._interval_s = interval_s
        # key -> (monotonic time of the last line, lines left out since)
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()  # connections log from threads of their own

    def warning(self, key: str, message: str, *args: object) -> None:
        with self._lock:
            line = self._line(key, message, args)
        if line is not None:
            self._logger.warning(line[0], *line[1])

    def _line(
        self, key: str, message: str, args: tuple[object, ...]
    ) -> tuple[str, tuple[object, ...]] | None:
        """What to log now, if anything."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is None:
            if len(self._last) >= MAX_KEYS:
                self._forget_before(now - self._interval_s)
        elif now - last[0] < self._interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return None
        elif last[1]:
            message += " (%d more like it in the last %.0f s, not logged)"
            args = (*args, last[1], now - last[0])
        self._last[key] = (now, 0)
        return message, args

    def _forget_before(self, moment: float) -> None:
        self._last = {k: v for k, v in self._last.items() if v[0] >= moment}
        while len(self._last) >= MAX_KEYS:  # all recent: forget the oldest
            del self._last[min(self._last, key=lambda k: self._last[k][0])]
