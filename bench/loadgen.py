"""A small HTTP/1.1 load generator: N keep-alive connections, each sending its next request
as soon as the answer to the last one arrived (closed loop, like `wrk` or `hey`).

The benchmarks share two cores with the server, so the client must cost as little as it
can: requests are encoded once, answers are parsed only as far as the status line and the
body's length, and everything runs in one thread on asyncio. `requests` in 16 threads spent
about as much CPU per request as the server did.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadResult:
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)

    def rate(self, status: int) -> float:
        return self.statuses[status] / self.seconds


def encode_post(
    host: str, port: int, path: str, body: Any, headers: dict[str, str] | None = None
) -> bytes:
    payload = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _connection(
    host: str, port: int, requests: list[bytes], stop: float, result: LoadResult
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        sent = 0
        while time.monotonic() < stop:
            writer.write(requests[sent % len(requests)])
            sent += 1
            status, _ = await _read_answer(reader)
            result.statuses[status] += 1
    finally:
        writer.close()


def run(host: str, port: int, requests: list[list[bytes]], seconds: float) -> LoadResult:
    """One connection per entry of `requests`, each cycling through its own list."""

    async def main() -> LoadResult:
        stop = time.monotonic() + seconds
        result = LoadResult(seconds=0.0)
        started = time.perf_counter()
        await asyncio.gather(*(_connection(host, port, r, stop, result) for r in requests))
        result.seconds = time.perf_counter() - started
        return result

    return asyncio.run(main())
