"""``eventpipe`` command line.

Each command lives in the module of its concern and registers itself through
``add_parser(subparsers)``; this module only wires them up, applies the shared
configuration flags and turns user errors into one clear line. Command modules must
not import TensorFlow at import time (``device-run`` runs where TensorFlow is absent).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline import tfenv  # noqa: F401
from pipeline.config import Config
from pipeline.errors import UserError

# Modules that define subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "pipeline.simulator.cli",
    "pipeline.commands",
    "serving.cli",
    "trainer.cli",
    "trainer.planner_cli",
]


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Flags every command shares: a config file and generic overrides."""
    parser.add_argument("--config", help="JSON config file (see pipeline/config.py for fields)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one config field, e.g. --set teacher.steps=100 (repeatable)",
    )


def load_config(args: argparse.Namespace) -> Config:
    """The typed config for a command: defaults < --config file < --set < dedicated flags.

    Dedicated flags are declared with ``dest="section.field"`` and default ``None``.
    """
    cfg = Config.load(args.config) if getattr(args, "config", None) else Config()
    cfg.apply_overrides(getattr(args, "set", []) or [])
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            cfg.set(dest, value)
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventpipe",
        description="Camera events in, verified production models out.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"eventpipe {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"eventpipe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
