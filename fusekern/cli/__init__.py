"""The ``fusekern`` command. Each subcommand lives in its own module of this package and
exposes ``register(subparsers)``, which adds its parser and sets ``func`` to the handler."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules providing subcommands, in the order they appear in --help.
_COMMAND_MODULES = [
    "fusekern.cli.pipeline",
    "fusekern.cli.vocab_map",
    "fusekern.cli.train",
    "fusekern.cli.demo",
]


def _accept_underscores(parser: argparse.ArgumentParser) -> None:
    """Let every ``--flag-name`` also be spelled ``--flag_name`` (as ``fusekern train``'s
    HfArgumentParser allows), in this parser and its subparsers; help lists the dashed form."""
    for action in list(parser._actions):
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _accept_underscores(sub)
        for opt in action.option_strings:
            alias = "--" + opt[2:].replace("-", "_")
            if opt.startswith("--") and alias != opt and alias not in parser._option_string_actions:
                parser._option_string_actions[alias] = action


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusekern",
        description="Knowledge fusion of LLMs: extract, align and fuse source models into a target. "
        "Every --flag-name may also be written --flag_name.",
    )
    from fusekern import __version__

    parser.add_argument("--version", action="version", version=f"fusekern {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in _COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    _accept_underscores(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except (ValueError, TypeError, OSError) as exc:  # OSError: missing/unreadable/unwritable paths
        print(f"fusekern {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
