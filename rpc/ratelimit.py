"""A logger wrapper that writes a repeated message at most once per interval and counts the rest."""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Rate-limit log records by format string; the next record written reports how many were skipped."""

    def __init__(self, logger: logging.Logger, *, interval_s: float = 5.0):
        self._logger = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def _emit(self, level: int, message: str, args: tuple[Any, ...], exc_info: bool) -> None:
        now = time.monotonic()
        if now - self._last.get(message, -1e9) < self._interval_s:
            self._skipped[message] = self._skipped.get(message, 0) + 1
            return
        self._last[message] = now
        skipped = self._skipped.pop(message, 0)
        if skipped:
            message = f"{message} ({skipped} similar records skipped)"
        self._logger.log(level, message, *args, exc_info=exc_info)

    def warning(self, message: str, *args: Any) -> None:
        self._emit(logging.WARNING, message, args, False)

    def error(self, message: str, *args: Any) -> None:
        self._emit(logging.ERROR, message, args, False)

    def exception(self, message: str, *args: Any) -> None:
        self._emit(logging.ERROR, message, args, True)
