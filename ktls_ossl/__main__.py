"""Command line: ``python -m ktls_ossl probe | serve | fetch | demo | agent | bench`` (also ``ktls-ossl``)."""
# Only what the chosen command needs is imported: the benchmark code (multiprocessing, ...) and
# serve.py (http.server, socketserver, ...) load when their command runs, never for ``probe``.
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from . import OPENSSL_VERSION, kernel
from .handshake import Policy


def _probe(args) -> int:
    report = kernel.probe()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"OpenSSL: {OPENSSL_VERSION}")
        print(report.format_table())
    return 0


def _serve(args) -> int:
    from . import serve

    cert, key = args.cert, args.key
    if not cert:
        cert, key = serve.make_self_signed(tempfile.mkdtemp(prefix="ktls-serve-"), args.hostname)
        print(f"ktls_ossl: self-signed certificate for {args.hostname}: {cert}", flush=True)
    try:
        context = serve.server_context(cert, key, Policy(args.policy), args.ciphers, args.ciphersuites,
                                       min_version=args.min_version, max_version=args.max_version,
                                       dhparam=args.dhparam, groups=args.groups)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; the context's own message
        print(f"python -m ktls_ossl serve: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.echo:
        server = serve.TLSEchoServer((args.bind, args.port), context, verbose=args.verbose,
                                     read_path=args.echo_read, write_path=args.echo_write)
    else:
        server = serve.HTTPSFileServer((args.bind, args.port), context, args.root, verbose=args.verbose)
    serve.serve_forever(server, args.port_file)
    return 0


def _fetch(args) -> int:
    from . import serve

    result = serve.fetch(args.url, cafile=args.cafile, output=args.output, policy=Policy(args.policy),
                         timeout=args.timeout, progress=not args.no_progress)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        rate = result["bytes"] / max(result["seconds"], 1e-9) / 1e6
        print(f"HTTP {result['status']} {result['reason']}: {result['bytes']} bytes in {result['seconds']:.2f} s "
              f"({rate:.1f} MB/s)")
        print(f"sha256 {result['sha256']}")
        for line in serve.placement_lines(result):
            print(line)
    return 0


def _fetch_epilog(failures) -> str:
    rows = "\n".join(f"  {failure.exit_code:>3}  {failure.meaning}"
                     for failure in sorted(failures, key=lambda failure: failure.exit_code))
    return ("On failure: one line on stderr with the reason, and curl's exit code for it:\n"
            f"{rows}\n"
            "(0: the body arrived whole.)")


def _demo(args) -> int:
    from . import demo

    return demo.transfer(size_mib=args.size_mib, agent=args.agent)


def _run(args) -> int:
    """The chosen command; a download that failed (fetch, demo) is one line on stderr and curl's
    exit code, not a traceback."""
    if args.command not in ("fetch", "demo"):
        return args.handler(args)
    from .serve import FetchError

    try:
        return args.handler(args)
    except FetchError as exc:
        print(f"{args.prog}: {exc.reason}", file=sys.stderr)
        return exc.exit_code


def _agent(args) -> int:
    from . import agent_server

    return agent_server.main(args)


def _bench(args) -> int:
    from . import bench

    return bench.main(args)


def _chosen_command(argv) -> str | None:
    """The subcommand named in argv: the top-level parser has no options but -h, so it is the
    first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    chosen = _chosen_command(argv)
    prog = "ktls-ossl" if os.path.basename(sys.argv[0]) == "ktls-ossl" else "python -m ktls_ossl"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    policies = [p.value for p in Policy]
    # serve's and bench's modules are imported (and bench's options added) only when chosen.
    if chosen == "serve":
        from .serve import TLS_VERSIONS
    else:
        TLS_VERSIONS = {}
    if chosen == "fetch":
        from .serve import FETCH_FAILURES
    else:
        FETCH_FAILURES = ()

    probe = commands.add_parser("probe", help="show what this kernel's TLS can do")
    probe.add_argument("--json", action="store_true", help="machine-readable output")
    probe.set_defaults(handler=_probe)

    serve = commands.add_parser("serve", help="HTTPS file server (or --echo TLS echo server)")
    serve.add_argument("--bind", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8443, help="0 picks a free port")
    serve.add_argument("--root", default=os.getcwd(), help="directory to serve")
    serve.add_argument("--cert", help="certificate chain (PEM); default: a self-signed one")
    serve.add_argument("--key", help="private key (PEM)")
    serve.add_argument("--hostname", default="localhost", help="name for the self-signed certificate")
    serve.add_argument("--echo", action="store_true", help="echo what clients send instead of HTTP")
    serve.add_argument("--echo-read", choices=["recv_into", "recv", "makefile"], default="recv_into",
                       help="how the echo server reads (socket I/O path)")
    serve.add_argument("--echo-write", choices=["sendall", "send", "makefile"], default="sendall",
                       help="how the echo server writes (socket I/O path)")
    serve.add_argument("--policy", choices=policies, default=Policy.AFTER_FINISHED.value)
    serve.add_argument("--ciphers", help="TLS 1.2 cipher string")
    serve.add_argument("--ciphersuites", help="TLS 1.3 cipher suites")
    serve.add_argument("--min-version", choices=TLS_VERSIONS, help="lowest TLS version accepted")
    serve.add_argument("--max-version", choices=TLS_VERSIONS, help="highest TLS version accepted")
    serve.add_argument("--dhparam", metavar="FILE", help="DH parameters (PEM) for TLS 1.2 DHE suites")
    serve.add_argument("--groups", metavar="LIST",
                       help="key exchange groups, e.g. X25519:ffdhe2048 (ffdhe* allow TLS 1.3 FFDHE)")
    serve.add_argument("--port-file", help="write the bound port here once listening")
    serve.add_argument("-v", "--verbose", action="store_true")
    serve.set_defaults(handler=_serve)

    fetch = commands.add_parser("fetch", help="download an https:// URL with ktls_ossl",
                                epilog=_fetch_epilog(FETCH_FAILURES) if FETCH_FAILURES else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    fetch.add_argument("url")
    fetch.add_argument("--cafile", help="trust this CA (default: the system's)")
    fetch.add_argument("--output", "-o", help="write the body here")
    fetch.add_argument("--policy", choices=policies, default=Policy.AFTER_FINISHED.value)
    fetch.add_argument("--timeout", type=float, default=60.0,
                       help="limit in seconds for connecting and for each wait for data (default 60)")
    fetch.add_argument("--no-progress", action="store_true",
                       help="no progress line (there is none anyway when stdout is not a terminal)")
    fetch.add_argument("--json", action="store_true")
    fetch.set_defaults(handler=_fetch, prog=fetch.prog)

    demo = commands.add_parser("demo", help="HTTPS transfer of a large file with sendfile, checked end to end")
    demo.add_argument("--size-mib", type=int, default=256)
    demo.add_argument("--agent", action="store_true",
                      help="the server's handshakes run by a handshake agent process that alone holds the key")
    demo.set_defaults(handler=_demo, prog=demo.prog)

    agent = commands.add_parser("agent", help="the handshake agent: holds the private keys, runs the handshakes")
    if chosen == "agent":
        from .agent_server import add_arguments as add_agent_arguments
        add_agent_arguments(agent)
    agent.set_defaults(handler=_agent)

    bench = commands.add_parser("bench", help="benchmarks against CPython ssl and OpenSSL's own kTLS")
    if chosen == "bench":
        from .bench import add_arguments
        add_arguments(bench)
    bench.set_defaults(handler=_bench)

    args = parser.parse_args(argv)
    if (args.command == "serve" and args.min_version and args.max_version
            and TLS_VERSIONS[args.min_version] > TLS_VERSIONS[args.max_version]):
        serve.error(f"--min-version {args.min_version} is above --max-version {args.max_version}")
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
