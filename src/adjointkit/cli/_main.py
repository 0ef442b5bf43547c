"""`adjointkit compare` and `adjointkit train`."""

import argparse
import sys

from .._version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adjointkit",
        description=(
            "Differentiate through ODE solves with pluggable adjoints: compare what "
            "each adjoint costs and gives on your machine, and train with one."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"adjointkit {__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import _compare, _train

    _compare.add_parser(sub)
    _train.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
