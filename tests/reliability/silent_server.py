"""A server that accepts TCP connections, reads whatever arrives and never writes a byte (test-only).

Run ``python tests/reliability/silent_server.py --port-file FILE --stats-file FILE [--port N]``.
It stands in for a leaf, or a Redis server, that hangs. It writes ``{"accepted", "open",
"bytes"}`` to the stats file whenever those change, so a test can check that every caller
closed its connections. It imports nothing but the standard library, so it starts within tens
of milliseconds and does not compete for CPU with the servers under test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

__all__ = ["main"]


def _write_atomically(path: str, text: str) -> None:
    temporary = f"{path}.tmp"
    Path(temporary).write_text(text)
    os.replace(temporary, path)


async def serve(port_file: str, stats_file: str, port: int) -> None:
    stats = {"accepted": 0, "open": 0, "bytes": 0}
    connections: set[asyncio.StreamWriter] = set()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats["accepted"] += 1
        stats["open"] += 1
        connections.add(writer)
        _write_atomically(stats_file, json.dumps(stats))
        try:
            while chunk := await reader.read(65536):
                stats["bytes"] += len(chunk)
        except ConnectionError:
            pass
        finally:
            connections.discard(writer)
            stats["open"] -= 1
            _write_atomically(stats_file, json.dumps(stats))
            writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", port, backlog=1024)
    _write_atomically(stats_file, json.dumps(stats))
    _write_atomically(port_file, f"{server.sockets[0].getsockname()[1]}\n")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    for writer in list(connections):
        writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", required=True, help="file the bound port is written to")
    parser.add_argument("--stats-file", required=True, help="file the connection counts are written to")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default %(default)s)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port_file, args.stats_file, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
