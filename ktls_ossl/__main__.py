"""Command line: ``python -m ktls_ossl probe [--json]``."""
from __future__ import annotations

import argparse
import json
import sys

from . import OPENSSL_VERSION, kernel


def _probe(args) -> int:
    report = kernel.probe()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"OpenSSL: {OPENSSL_VERSION}")
        print(report.format_table())
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ktls_ossl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    probe = commands.add_parser("probe", help="show what this kernel's TLS can do")
    probe.add_argument("--json", action="store_true", help="machine-readable output")
    probe.set_defaults(handler=_probe)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
