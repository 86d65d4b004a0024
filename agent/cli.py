"""`p2v-agent`: one argparse front for every subcommand.

Each subcommand lives in its own module, which exposes ``register(subparsers)``: it adds its parser
and sets ``func`` to a callable taking the parsed arguments and returning the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from agent import settings as settings_mod

# Modules that provide subcommands, in the order `--help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "agent.probe.command", "agent.capture_cmd", "agent.precopy_cmd", "agent.restore_cmd", "agent.repair.command",
    "agent.repair.restore_and_repair",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2v-agent",
        description="Migrate this machine into a XenServer / XCP-ng VM, or repair a migrated VM.",
    )
    settings_mod.add_source_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None):
        return args.func(args)
    return start(args)


def start(args: argparse.Namespace) -> int:
    """No subcommand: the settings decide between the unattended run and the TUI on a terminal.

    Both are imported here, late, so that the headless subcommands never load textual.
    """
    try:
        settings = settings_mod.load_from_args(args)
    except settings_mod.SettingsError as e:
        print("The settings cannot be used:\n" + str(e), file=sys.stderr)
        return 2
    if settings.runs_unattended or not (sys.stdin.isatty() and sys.stdout.isatty()):
        from agent import unattended
        return unattended.run(settings)
    from agent import tui
    return tui.run(settings)


if __name__ == "__main__":
    sys.exit(main())
