"""An application of another uid that uses the handshake agent (run by tests/test_agent.py).

    python -m tests.agent_app AGENT_SOCKET KEY_FILE UID GID MODE

It imports everything it will need, then drops to UID/GID (the interpreter may live where the
other uid cannot read), tries to open the agent's private key file (it must not be able to), listens
on 127.0.0.1, prints its port, serves one TLS connection whose handshake the agent runs, echoes one
message, prints "ready" and waits for a line on stdin before it exits, so that the test can read its
memory meanwhile. What it sees goes to stdout, one "name: value" line each.
"""
from __future__ import annotations

import importlib
import os
import socket
import ssl
import sys

from ktls_ossl import kernel
from ktls_ossl.agent import AgentContext
from ktls_ossl.errors import KTLSAgentError


def say(name: str, value) -> None:
    print(f"{name}: {value}", flush=True)


def main(agent_path: str, key_path: str, uid: int, gid: int, mode: str) -> int:
    # What runs later and loads modules lazily, while the interpreter's files are still readable:
    importlib.import_module("ktls_ossl.certificate")  # getpeercert()
    "localhost".encode("idna")  # getaddrinfo's codec
    kernel.probe()  # the kernel's TLS abilities, measured once per process
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    try:
        with open(key_path, "rb"):
            say("key", "readable")
    except OSError as exc:
        say("key", type(exc).__name__)
    listener = socket.create_server(("127.0.0.1", 0))
    say("port", listener.getsockname()[1])
    raw, _ = listener.accept()
    context = AgentContext(agent_path, ssl.PROTOCOL_TLS_SERVER, mode=mode, timeout=60)
    try:
        tls = context.wrap_socket(raw, server_side=True)
    except (KTLSAgentError, ssl.SSLError) as exc:
        say("agent", getattr(exc, "reason", None) or type(exc).__name__)
        raw.close()
        return 0
    say("agent", "handshake done")
    say("ktls", f"{tls.ktls.tx} {tls.ktls.rx}")
    message = tls.recv(100)
    tls.sendall(message)
    say("ready", len(message))
    sys.stdin.readline()
    tls.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]))
