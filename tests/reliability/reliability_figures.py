"""Figures of the reliability tests: recorded per fault as JSON, rendered into docs/reliability.md.

The tests add one record per fault (the load it ran under, requests sent and failed, latency
percentiles, and fault-specific counts). At the end of the session the records are written to
``$FMLITE_RELIABILITY_FIGURES`` (default ``reliability-figures.json`` in pytest's base temp
directory), and when ``FMLITE_RELIABILITY_DOC`` names a file, the report is rendered into it::

    FMLITE_RELIABILITY_DOC=docs/reliability.md .venv/bin/python -m pytest tests/reliability

``python tests/reliability/reliability_figures.py FIGURES.json docs/reliability.md`` renders a
saved figures file again.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Mapping

__all__ = ["FigureBook", "render_markdown", "main"]

DOC_HEADER = """# Reliability: faults under load

Every row of the failure table in the design is a test in `tests/reliability/`: a leaf killed,
a leaf slower than the chunk timeout, a silent leaf, a Redis outage, new versions under load,
bad input and SIGTERM. The tests run against real L0, L1 and leaf processes on loopback. This
page is generated from the figures of the latest run of those tests:

    FMLITE_RELIABILITY_DOC=docs/reliability.md .venv/bin/python -m pytest tests/reliability

Latencies are client-side, measured by the test process, which shares the machine's cores
with every server process, so they are an upper bound of what the servers need. "Failed" counts
every request that did not return the expected scores: a typed error, a transport error or a
reply that does not match the request. Some faults leave no way to answer: the only leaf is
silent, both tries of a chunk time out, or the L0 that was sent the request has stopped. There
requests fail by design, and the test checks what must still hold: typed errors only, no reply
for another request, no leaked connection, every request accepted before SIGTERM answered.

## How the platform reacts to each fault

- **Deadlines.** A request's `timeout_ms` is turned into a deadline when a server begins reading
  the call. L0 passes the time left to L1, and L1 passes `min(chunk timeout, time left)` to each
  leaf call, each less a margin of 5% (at most 5 ms) so that the next tier gives up first and
  replies with a typed error. Work whose deadline has passed is not started. A tier that
  receives no time left replies `DeadlineExceeded`. L1 sends no retry, hedge or re-send with
  less than 1 ms left, and it cancels the chunk calls still pending at the deadline. A server
  replies `DeadlineExceeded` without calling the handler when a call's budget ran out while the
  call was being read. Each drop is counted (`fmlite_deadline_dropped_total`,
  `fmlite_expired_calls_total`).
- **Replica choice.** L0 and L1 pick the next-tier replica by two random choices, comparing
  `(calls in flight + 1) * latency estimate` (a peak EWMA). Replicas are ejected after 5
  consecutive failed calls, after 2 failed health checks, or at once when a health check reports
  not ready; 2 passing checks re-admit one. With every replica ejected, calls go to all.
- **Retries and hedging.** L1 retries a failed chunk once on another replica. A chunk still
  pending after the 95th percentile of recent leaf-call latency is hedged on another replica
  while the budget of 5% extra calls lasts; the first reply wins and the other call is cancelled,
  which closes its connection.
- **Versions.** A response is built from chunks of one model version and one profile version.
  Chunks can come back from different versions when a leaf switches in the middle of a
  request. L1 then keeps the version that most chunks carry (ties go to the newer one) and
  re-sends the other chunks to leaves last seen at that version, at most twice.
- **Drain.** On SIGTERM every tier turns readiness false, keeps serving for `--drain-grace-s`
  (0 by default) with `Connection: close` on every reply, closes the listening socket, finishes
  the calls in flight within `--drain-timeout-s`, closes its client pools and exits 0.
- **Limits.** At most 10,000 glance ids per request and 128 UTF-8 bytes per id
  (`MAX_GLANCES_PER_REQUEST`, `MAX_ID_BYTES` in `thrift/fmlite.thrift`), checked by every tier
  before any fan-out. The HTTP body limit is derived from them, and a larger body gets
  `InvalidRequest` naming both limits, never a bare 413.
- **Bad bodies.** Every server walks a call's body against the IDL before thriftpy2 decodes it
  (`rpc/wire_check.py`). thriftpy2 0.7.1 alone spins for about 40 s of CPU on a 27-byte body
  that declares 2**31 elements of a type without wire width, and silently drops a field sent
  with the wrong wire type. With the walk, such bodies get a Thrift application exception, and a
  wrongly typed field gets `InvalidRequest` naming it. On the 2-core development machine the
  walk costs about as much CPU as the decode itself up to 256 glance ids (20 µs for 30 ids,
  40 µs for 100). At 10,000 ids it costs 15% of the decode, because NumPy checks the id list.
  A property-based test (hypothesis, 200 examples per property) fuzzes the decoder in every
  `make test`.
"""


class FigureBook:
    """Figures of one test session, keyed by fault name."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def add(self, fault: str, **figures: Any) -> None:
        self.records[fault] = figures

    def write(self, path: Path) -> None:
        document = {
            "written_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "python": sys.version.split()[0],
            "machine": f"{platform.machine()}, {_cpu_count()} CPUs",
            "faults": self.records,
        }
        path.write_text(json.dumps(document, indent=1, sort_keys=True))


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Mapping):
        return "; ".join(f"{key}: {_cell(item)}" for key, item in value.items()) or "none"
    return str(value).replace("|", "/")


def render_markdown(document: Mapping[str, Any]) -> str:
    """Return docs/reliability.md for a figures document."""
    lines = [DOC_HEADER]
    lines.append(f"## Figures of the latest run\n\nRun at {document['written_at']} on {document['machine']}, Python {document['python']}.\n")
    lines.append("| fault | load | sent | failed | p50 ms | p99 ms | max ms |")
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    faults = document["faults"]
    for name in sorted(faults):
        record = faults[name]
        lines.append(
            f"| {name} | {_cell(record.get('load', ''))} | {_cell(record.get('sent', ''))} | {_cell(record.get('failed', ''))} "
            f"| {_cell(record.get('p50_ms', ''))} | {_cell(record.get('p99_ms', ''))} | {_cell(record.get('max_ms', ''))} |"
        )
    lines.append("\n## Details per fault\n")
    for name in sorted(faults):
        record = faults[name]
        extra = {key: value for key, value in record.items() if key not in {"load", "sent", "failed", "p50_ms", "p99_ms", "max_ms"}}
        lines.append(f"### {name}\n")
        if "note" in extra:
            lines.append(f"{extra.pop('note')}\n")
        for key in sorted(extra):
            lines.append(f"- {key.replace('_', ' ')}: {_cell(extra[key])}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 2:
        print("usage: reliability_figures.py FIGURES.json OUTPUT.md", file=sys.stderr)
        return 2
    document = json.loads(Path(arguments[0]).read_text())
    Path(arguments[1]).write_text(render_markdown(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
