"""`p2v-agent`: one argparse front for every subcommand.

Each subcommand lives in its own module, which exposes ``register(subparsers)``: it adds its parser
and sets ``func`` to a callable taking the parsed arguments and returning the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import tempfile
from pathlib import Path

from agent import settings as settings_mod

# The agent's log, on the live ISO in /tmp: warnings and errors, and with p2v.debug everything.
LOG = Path(tempfile.gettempdir()) / "xenp2v-agent.log"

# The subcommands and the modules that provide them, in the order `--help` lists them.
COMMANDS: dict[str, str] = {
    "probe": "agent.probe.command", "capture": "agent.transfer.capture_cmd",
    "precopy": "agent.warm.precopy_cmd", "restore": "agent.transfer.restore_cmd",
    "repair": "agent.repair.command",
    "restore-and-repair": "agent.repair.restore_and_repair",
}
# Options of the main parser that take a value (the word after them is no subcommand).
_VALUED = ("--cmdline", "--config")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `command`, only that subcommand's module is imported (a
    final sync's start-up is downtime: the repair's modules would cost it a fifth of a second)."""
    parser = argparse.ArgumentParser(
        prog="p2v-agent",
        description="Migrate this machine into a XenServer / XCP-ng VM, or repair a migrated VM.",
    )
    settings_mod.add_source_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if command in (None, name):
            importlib.import_module(module).register(sub)
    return parser


def subcommand(argv: list[str]) -> str | None:
    """The subcommand `argv` names, or None (none, --help, or a word that is none: then the
    whole parser says what there is)."""
    words = iter(argv)
    for word in words:
        if word in _VALUED:
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C's KeyboardInterrupt, so that every
    `finally` and ExitStack on the way out runs: the repair's loop device is detached, its mounts
    unmounted and its /tmp/xenp2v-repair-* directory removed, as they are after Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame) -> None:
    # The cleanup that follows runs to its end: a second signal would cut it short.
    for each in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(each, signal.SIG_IGN)
    raise Stopped(signum)


def stoppable(what: str, body) -> int:
    """`body()`, with SIGTERM and SIGHUP raising Stopped; Ctrl-C or either signal ends with one
    sentence and 130 (Ctrl-C) or 128 + the signal's number, not a traceback. The TUI is not run
    through this: Textual owns the terminal (and handles only SIGTSTP/SIGCONT itself)."""
    main_thread = threading.current_thread() is threading.main_thread()
    handled = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    before = {each: signal.getsignal(each) for each in handled} if main_thread else {}
    if main_thread:
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGHUP, _stop)
    try:
        return body()
    except KeyboardInterrupt as e:
        name, status = "Ctrl-C", 130
        if isinstance(e, Stopped):
            name, status = signal.Signals(e.signum).name, 128 + e.signum
        print(f"Stopped ({name}): {what} did not finish; what it had attached or mounted was "
              "released, nothing was left attached. Start it again to finish.", file=sys.stderr)
        return status
    finally:
        for each, handler in before.items():
            signal.signal(each, handler if handler is not None else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(subcommand(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if getattr(args, "func", None):
        return stoppable(f"p2v-agent {args.command}", lambda: args.func(args))
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
    start_logging(settings.debug)
    if settings.runs_unattended or not (sys.stdin.isatty() and sys.stdout.isatty()):
        from agent import unattended
        return stoppable("The unattended run", lambda: unattended.run(settings, log=LOG))
    from agent import tui
    return tui.run(settings, log=LOG)


def start_logging(debug: bool) -> None:
    """Every record of the agent (and, with p2v.debug, of the libraries it calls) into LOG, never
    onto the terminal the TUI draws on. p2v.debug lowers the level to DEBUG, so the log holds
    each request to the server and its answer, each retry, and the traceback behind each error
    shown as a sentence."""
    root = logging.getLogger()
    try:
        handler = logging.FileHandler(LOG)
    except OSError as e:
        print(f"The agent's log cannot be written to {LOG} ({e.strerror}); it goes on without.",
              file=sys.stderr)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    if debug:
        root.setLevel(logging.DEBUG)


if __name__ == "__main__":
    sys.exit(main())
