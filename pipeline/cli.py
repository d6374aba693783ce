"""``eventpipe`` command line.

Each command lives in the module of its concern and registers itself through
``add_parser(subparsers)``; this module only wires them up, applies the shared
configuration flags and turns user errors, and a full disk anywhere below, into one clear
line. Command modules must not import TensorFlow at import time (``device-run`` runs where
TensorFlow is absent).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from contract import source, tfenv  # noqa: F401
from contract.errors import UserError, disk_full

# Modules that define subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "simulator.cli",
    "pipeline.commands",
    "serving.cli",
    "ondevice.cli",
    "trainer.cli",
    "trainer.parallel.planner_cli",
]


def installed_version() -> str:
    """The installed package's version (setup.py), or "unknown" outside an install."""
    from importlib import metadata

    try:
        return metadata.version("eventpipe")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventpipe",
        description="Camera events in, verified production models out.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


SETUP_HINT = "set it up with `make setup` and run `.venv/bin/eventpipe` (or `source .venv/bin/activate`)"
# Runs on devices with LiteRT (or tflite-runtime), PIL and NumPy only, on whatever Python they have.
ANY_PYTHON_COMMANDS = {"device-run"}
OWN_PACKAGES = {"contract", "ondevice", "simulator", "trainer", "serving", "components", "pipeline"}


def environment_problem(command: str | None, missing: str | None = None) -> str | None:
    """One line on why this interpreter cannot run ``command``, or None when it can."""
    here = f"{sys.executable} (Python {sys.version.split()[0]})"
    if command not in ANY_PYTHON_COMMANDS and sys.version_info[:2] != (3, 10):
        return f"eventpipe needs Python 3.10 (TFX 1.16 supports >=3.9,<3.11), not {here}; {SETUP_HINT}"
    if missing:
        return f"package {missing!r} is not installed for {here}; {SETUP_HINT}"
    return None


def main(argv: list[str] | None = None) -> int:
    source.honour_parent_death()  # a child of a pipeline (teacher, server) dies with it
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    prog = f"eventpipe {command}" if command else "eventpipe"
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        problem = environment_problem(args.command)
        if problem:
            raise UserError(problem)
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in OWN_PACKAGES:
            raise  # our own code is broken: that is a bug, keep the traceback
        # A wrong interpreter or a missing venv, not a bug: say which and how to fix it.
        print(f"{prog}: error: {environment_problem(command, e.name or str(e))}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        full = disk_full(e, command_workdir(args))
        if full is None:
            raise  # a bug or an unexpected failure: keep the traceback
        print(f"{prog}: error: {full}", file=sys.stderr)
        return full.exit_code


def command_workdir(args: argparse.Namespace | None) -> str | None:
    """The workdir the command resolved (--workdir, --config or the default), which a full disk's
    message names when the failing write did not; None for commands without one."""
    if args is None or not hasattr(args, "run.workdir"):
        return None
    from contract.config import load_config

    try:
        return load_config(args).workdir
    except Exception:  # noqa: BLE001 (the flags were read once already; naming no workdir is the fallback)
        return None


if __name__ == "__main__":
    sys.exit(main())
