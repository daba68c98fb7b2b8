"""CPU time of server processes, read from ``/proc/<pid>/stat`` of each process.

``utime + stime`` of a process covers all of its threads, so the sum over every server process
of a configuration is the CPU the configuration used, whatever else the machine runs. The kernel
counts in clock ticks (usually 10 ms), so a measurement window should use at least a few
CPU-seconds for the rounding to stay below one percent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Mapping

__all__ = ["TICKS_PER_SECOND", "ProcessGone", "process_cpu_seconds", "CpuSnapshot", "snapshot_cpu"]

# Unit of the kernel's CPU counters; a process that ran less than one tick reads 0.
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


class ProcessGone(RuntimeError):
    """A process whose CPU time was requested has exited."""


def process_cpu_seconds(pid: int) -> float:
    """Return user plus system CPU seconds used so far by process ``pid`` and all its threads."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            text = stream.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(f"process {pid} has exited; its CPU time can no longer be read") from None
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    fields = text[text.rindex(b")") + 2 :].split()
    # Fields 14 (utime) and 15 (stime), counted from 1, are 11 and 12 after the name.
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds of each named process at one moment."""

    seconds: Mapping[str, float]

    def minus(self, earlier: "CpuSnapshot") -> dict[str, float]:
        """Return CPU seconds used by each process between ``earlier`` and this snapshot."""
        return {name: value - earlier.seconds[name] for name, value in self.seconds.items()}


def snapshot_cpu(processes: Iterable[tuple[str, int]]) -> CpuSnapshot:
    """Read the CPU time of every ``(name, pid)`` pair."""
    return CpuSnapshot({name: process_cpu_seconds(pid) for name, pid in processes})
