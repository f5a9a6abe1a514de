"""Helpers for tests of the handshake agent: an agent process, and peers for its connections."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass

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
                name: str = "agent.sock", user: int | None = None) -> AgentProcess:
    """Start an agent and return once it listens (it prints a line when its socket exists)."""
    path = os.path.join(directory, name)
    command = [PYTHON, "-m", "ktls_ossl", "agent", "--socket", path, "-v"]
    for identity in identities:
        command += ["--cert", identity.chain_path, "--key", identity.key_path]
    if ca:
        command += ["--ca", ca]
    command += list(extra)
    stderr_path = path + ".log"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT, user=user)
    line = _read_line(process, scaled(30))
    if "listening" not in line:
        process.kill()
        with open(stderr_path, encoding="utf-8", errors="replace") as log:
            raise RuntimeError(f"the agent did not start: {line!r}\n{log.read()}")
    return AgentProcess(process, path, stderr_path)


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0].decode(errors="replace") if result else ""


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
