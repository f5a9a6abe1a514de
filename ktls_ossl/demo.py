"""The demonstration: a large file over HTTPS with sendfile, checked end to end.

A ktls_ossl HTTPS file server (sendfile: the kernel encrypts the file's pages) and a ktls_ossl
client in one process, on loopback. Prints the SHA-256 on both ends, where each side's record
layer ran, and the /proc/net/tls_stat counters that prove the kernel carried the bytes (both
sides' installs: they share this network namespace). A progress line while the file arrives, on
a terminal. With
``agent``, the server's handshakes are run by a handshake agent process (``python -m ktls_ossl
agent``), the only process that holds the server's private key.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile

from . import OPENSSL_VERSION, kernel
from .serve import HTTPSFileServer, fetch, make_self_signed, placement_lines, run_in_thread, server_context


@contextlib.contextmanager
def _agent_context(directory: str, cert: str, key: str):
    """A handshake agent holding ``cert``/``key``, and a server context whose handshakes it runs."""
    from .agent import AgentContext
    from .agent_server import start_process

    path = os.path.join(directory, "agent.sock")
    agent = start_process(path, [(cert, key)])
    try:
        print(f"server handshakes: run by the handshake agent (pid {agent.pid}), the only process that "
              "holds the private key")
        import ssl
        yield AgentContext(path, ssl.PROTOCOL_TLS_SERVER)
    finally:
        agent.terminate()
        agent.wait(10)


def transfer(size_mib: int = 256, agent: bool = False) -> int:
    report = kernel.probe()
    print(f"kernel {report.kernel_release}, {OPENSSL_VERSION}, "
          f"tls ULP {'available' if report.ulp_available else 'UNAVAILABLE: ' + str(report.ulp_message)}")
    with tempfile.TemporaryDirectory(prefix="ktls-demo-") as directory:
        cert, key = make_self_signed(directory)
        path = os.path.join(directory, "payload.bin")
        digest = hashlib.sha256()
        with open(path, "wb") as out:
            chunk = os.urandom(1 << 20)
            for index in range(size_mib):
                block = hashlib.sha256(chunk + index.to_bytes(4, "big")).digest() * (1 << 15)
                out.write(block)
                digest.update(block)
        expected = digest.hexdigest()
        with (_agent_context(directory, cert, key) if agent else contextlib.nullcontext(
                server_context(cert, key))) as context:
            server = HTTPSFileServer(("127.0.0.1", 0), context, directory)
            run_in_thread(server)
            try:
                url = f"https://localhost:{server.server_address[1]}/payload.bin"
                result = fetch(url, cafile=cert, progress=True)
            finally:
                server.shutdown()
                server.server_close()
    rate = result["bytes"] / max(result["seconds"], 1e-9) / (1 << 20)
    print(f"file:     {size_mib} MiB, sha256 {expected}")
    print(f"received: {result['bytes']} bytes in {result['seconds']:.2f} s ({rate:.0f} MiB/s), "
          f"sha256 {result['sha256']}")
    for line in placement_lines(result):
        print(line)
    ok = result["sha256"] == expected and result["bytes"] == size_mib << 20
    print("checksum: " + ("MATCH" if ok else "MISMATCH"))
    return 0 if ok else 1
