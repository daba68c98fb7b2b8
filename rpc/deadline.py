"""Deadline of the call a server is handling.

A request carries its time budget as ``timeout_ms``, relative to the moment the receiving server
began reading it. The server records that moment (``time.monotonic()``) for each call, so a tier
turns the budget into a local deadline without counting the time its own event loop took to reach
the handler. Relative budgets need no clock agreement between hosts. The price is that the time a
request spent in the network or in a socket buffer before the server read it is not counted.
"""

from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["call_started", "request_deadline", "receiving_call", "forward_timeout_ms"]

# The budget passed to the next tier is the time left minus this share of it (at most
# FORWARD_MARGIN_MAX_MS), so the next tier gives up and answers DeadlineExceeded before the
# caller's own timeout closes the connection.
FORWARD_MARGIN_SHARE = 0.05
FORWARD_MARGIN_MAX_MS = 5.0

_call_started: contextvars.ContextVar[float | None] = contextvars.ContextVar("fmlite_call_started", default=None)


def call_started() -> float:
    """Return the monotonic time the server began reading the current call, or now outside a call."""
    started = _call_started.get()
    return time.monotonic() if started is None else started


def request_deadline(timeout_ms: int | None, *, default_ms: int) -> tuple[float, int]:
    """Return (monotonic deadline, budget in ms) of the current call; ``default_ms`` applies when unset."""
    budget_ms = default_ms if timeout_ms is None else timeout_ms
    return call_started() + budget_ms / 1000.0, budget_ms


@contextmanager
def receiving_call(started: float) -> Iterator[None]:
    """Mark the code inside as handling a call the server began reading at ``started``."""
    token = _call_started.set(started)
    try:
        yield
    finally:
        _call_started.reset(token)


def forward_timeout_ms(remaining_s: float) -> int:
    """Return the ``timeout_ms`` to send with a call that may take ``remaining_s`` seconds."""
    remaining_ms = remaining_s * 1000.0
    margin_ms = min(FORWARD_MARGIN_MAX_MS, remaining_ms * FORWARD_MARGIN_SHARE)
    return max(1, int(remaining_ms - margin_ms))
