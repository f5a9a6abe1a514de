"""Helpers for tests of the handshake agent: an agent process, and peers for its connections."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import zlib
from dataclasses import dataclass

from ktls_ossl.agent_server import start_process

from .timing import scaled

PYTHON = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class AgentProcess:
    """``python -m ktls_ossl agent`` in a process of its own, listening at ``path``."""

    process: subprocess.Popen
    path: str
    stderr_path: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(scaled(10))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def log(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as stderr:
            return stderr.read()


def start_agent(directory: str, identities, *, ca: str | None = None, extra: tuple[str, ...] = (),
                name: str = "agent.sock") -> AgentProcess:
    """Start an agent (agent_server.start_process) that logs every handshake to a file, and return
    once it listens."""
    path = os.path.join(directory, name)
    stderr_path = path + ".log"
    with open(stderr_path, "wb") as stderr:
        try:
            process = start_process(path, [(identity.chain_path, identity.key_path) for identity in identities],
                                    ca=ca, options=("-v", *extra), stderr=stderr, cwd=ROOT)
        except RuntimeError as exc:
            with open(stderr_path, encoding="utf-8", errors="replace") as log:
                raise RuntimeError(f"{exc}\n{log.read()}") from None
    return AgentProcess(process, path, stderr_path)


def payload(size: int, seed: int) -> bytes:
    """Deterministic bytes that differ per seed (so a mixed-up direction shows)."""
    block = bytes((seed * 31 + index * 7) & 0xFF for index in range(4096))
    return (block * (size // len(block) + 1))[:size]


def echo_checksum(sock, size: int) -> int:
    """Read ``size`` bytes, answer their CRC-32 as 4 bytes, return it."""
    received = bytearray()
    while len(received) < size:
        chunk = sock.recv(min(65536, size - len(received)))
        if not chunk:
            raise EOFError(f"{len(received)} of {size} bytes")
        received += chunk
    checksum = zlib.crc32(received)
    sock.sendall(checksum.to_bytes(4, "big"))
    return checksum


def send_and_check(sock, data: bytes) -> None:
    """Send ``data`` and check the CRC-32 the other side answers."""
    sock.sendall(data)
    answer = bytearray()
    while len(answer) < 4:
        chunk = sock.recv(4 - len(answer))
        if not chunk:
            raise EOFError("no checksum")
        answer += chunk
    assert int.from_bytes(answer, "big") == zlib.crc32(data)
