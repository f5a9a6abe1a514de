"""The client side of tests/soak/test_load.py, run as a child process (so that the server process's
memory per connection can be measured): CPython's ssl under asyncio's stock loop, a peer that shares
no code with ktls_ossl.

Usage: python loadclient.py JSON, with host, port, ca (path), count, payload (bytes each way),
concurrency (handshakes in flight at once) and timeout (seconds per phase).

It opens ``count`` connections (even ones TLS 1.3, odd ones TLS 1.2) and holds them. Once all are up
it prints {"event": "established", ...}; then on each connection it sends ``payload`` random bytes,
reads the server's SHA-256 of them followed by ``payload`` bytes of the server's, compares the
digest with its own, and sends back the SHA-256 of what it read (the server compares that one).
It prints {"event": "exchanged", ...}, waits for a line "close" on stdin (while the server measures
itself with every connection open), closes them all and prints {"event": "done", ...}. Each line on
stdout is one JSON object; errors are counted and the first few are quoted.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import sys
import time

MAX_QUOTED = 5


class Results:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.error_count = 0
        self.mismatches = 0

    def error(self, phase: str, index: int, exc: BaseException) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_QUOTED:
            self.errors.append(f"{phase} #{index}: {type(exc).__name__}: {exc}")

    def line(self, event: str, **figures) -> None:
        print(json.dumps({"event": event, "errors": self.error_count, "quoted": self.errors,
                          "mismatches": self.mismatches, **figures}), flush=True)


def client_contexts(ca: str) -> dict[int, ssl.SSLContext]:
    contexts = {}
    for parity, version in ((0, ssl.TLSVersion.TLSv1_3), (1, ssl.TLSVersion.TLSv1_2)):
        ctx = ssl.create_default_context(cafile=ca)
        ctx.minimum_version = ctx.maximum_version = version
        contexts[parity] = ctx
    return contexts


async def main(config: dict) -> None:
    results = Results()
    contexts = client_contexts(config["ca"])
    count, payload, timeout = config["count"], config["payload"], config["timeout"]
    # Handshakes in flight at once are bounded (the listen backlog and the server's CPU are), the
    # connections held are not.
    gate = asyncio.Semaphore(config["concurrency"])

    async def connect(index: int):
        async with gate:
            try:
                return await asyncio.wait_for(asyncio.open_connection(
                    config["host"], config["port"], ssl=contexts[index % 2], server_hostname="localhost"),
                    timeout)
            except Exception as exc:
                results.error("connect", index, exc)
                return None

    started = time.monotonic()
    streams = await asyncio.gather(*(connect(index) for index in range(count)))
    open_streams = [(index, pair) for index, pair in enumerate(streams) if pair is not None]
    results.line("established", connected=len(open_streams), seconds=round(time.monotonic() - started, 2))

    async def exchange(index: int, reader, writer) -> None:
        try:
            mine = os.urandom(payload)
            writer.write(mine)
            await writer.drain()
            digest = await reader.readexactly(32)
            theirs = await reader.readexactly(payload)
            if digest != hashlib.sha256(mine).digest():
                results.mismatches += 1
            writer.write(hashlib.sha256(theirs).digest())
            await writer.drain()
        except Exception as exc:
            results.error("exchange", index, exc)

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(exchange(index, *pair) for index, pair in open_streams)),
                           timeout)
    results.line("exchanged", seconds=round(time.monotonic() - started, 2))

    command = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if command.strip() != "close":
        raise SystemExit(f"expected 'close' on stdin, got {command!r}")

    async def close(index: int, writer) -> None:
        try:
            writer.close()
            await writer.wait_closed()
        except Exception as exc:
            results.error("close", index, exc)

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(close(index, pair[1]) for index, pair in open_streams)), timeout)
    results.line("done", seconds=round(time.monotonic() - started, 2))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
