"""Command line: ``ckpt-inspector [FILES...]`` opens the window (where there is a display,
see ``_app``); ``info``, ``scan``, ``demo``, ``load``, ``export``, ``arch``, ``check``,
``stats``, ``diff`` and ``devices`` run a command. With ``--json`` every exit prints one JSON
object (``_errors.answer_in_json``).

One module per group of commands, each with ``add_parser(sub)`` and ``run(args)``;
how an error ends a command (one line on stderr, an exit code) is ``_errors``'s table.
Exit codes: 0 ok / safe, 1 not safe (``export``: failed or not verified), 2 usage,
3 unreadable input, 130 / 143 after Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ckpt_inspector import __version__
from ckpt_inspector.cli import _app
from ckpt_inspector.cli._app import launch_app as launch_app  # the window
from ckpt_inspector.cli._errors import (
    EXIT_OK,
    EXIT_USAGE,
    answer_in_json,
    interrupted,
    note,
    usage,
)
from ckpt_inspector.core.extras import missing

# each command's module, in the order `--help` lists them: a command imports only its own
# module (what it needs to read a file comes with it), not every command's
_MODULES = {"info": "inspect", "scan": "inspect", "demo": "inspect", "load": "load",
            "export": "export", "arch": "arch", "check": "check", "stats": "stats",
            "diff": "diff", "devices": "devices"}


def _group(name: str) -> ModuleType:
    return importlib.import_module(f"ckpt_inspector.cli.{_MODULES[name]}")


def _runner(name: str) -> Callable[[argparse.Namespace], int]:
    return lambda args: _group(name).run(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    name: _runner(name) for name in _MODULES}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2, as argparse does
        self.print_usage(sys.stderr)
        note(message)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser: every command's, or only ``command``'s (what running it
    needs: the other commands' modules stay unimported)."""
    p = _Parser(prog="ckpt-inspector",
                description="Open PyTorch checkpoints safely and see what is inside.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--no-cache", action="store_true",
                   help="do not read or write the disk cache of remote files' structure "
                        "(any command, anywhere on the line; CKPT_INSPECTOR_NO_CACHE=1)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    names = [command] if command in _MODULES else list(_MODULES)
    for module in dict.fromkeys(_MODULES[n] for n in names):
        importlib.import_module(f"ckpt_inspector.cli.{module}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = _global_options(sys.argv[1:] if argv is None else argv)
    end = argv.index("--") if "--" in argv else len(argv)
    if "--json" in argv[:end]:  # every exit prints one JSON object, errors too
        return answer_in_json(lambda: _main(argv))
    return _main(argv)


def _main(argv: list[str]) -> int:
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        # the window, with these files open: a mistyped command is not a file name
        mistake = _app.unknown_word(argv, COMMANDS)
        return usage(mistake) if mistake else launch_app(argv)
    parser = _parser(argv[0])
    args = parser.parse_args(argv)
    _hide_credentials(args)
    handler = COMMANDS[args.command]
    for stream in (sys.stdout, sys.stderr):  # a file's names may hold lone surrogates
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    terminated, previous = _on_sigterm()
    try:
        return handler(args)
    except ModuleNotFoundError as err:  # torch, on a light install: say what to install
        needs = missing(err)
        if needs is None:
            raise
        return usage(f"{args.command} {needs}")
    except BrokenPipeError:  # e.g. piped into head
        return EXIT_OK
    except KeyboardInterrupt:
        return interrupted(args.command, 128 + signal.SIGTERM if terminated else None)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _on_sigterm() -> tuple[list[int], Any]:
    """SIGTERM stops a command as Ctrl-C does (its --json answer printed, exit 143), not by
    the default action that prints nothing. (the list that holds the signal once it came,
    the handler it replaced: None off the main thread, where none is set)"""
    came: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        return came, None

    def stop(signum: int, _frame: Any) -> None:
        came.append(signum)
        raise KeyboardInterrupt

    return came, signal.signal(signal.SIGTERM, stop)


def _hide_credentials(args: argparse.Namespace) -> None:
    """URLs given with ``user:pass@`` are used with them but shown (in every message and
    JSON output) without them."""
    from ckpt_inspector.core.io.urls import redact

    for name, value in vars(args).items():
        if isinstance(value, str) and "@" in value:
            setattr(args, name, redact(value))
        elif isinstance(value, list) and any(isinstance(v, str) and "@" in v for v in value):
            setattr(args, name, [redact(v) if isinstance(v, str) else v for v in value])


def _global_options(argv: list[str]) -> list[str]:
    """``argv`` less the options for every command (and the window), applied: ``--no-cache``
    sets CKPT_INSPECTOR_NO_CACHE=1, which child processes inherit."""
    end = argv.index("--") if "--" in argv else len(argv)
    if "--no-cache" not in argv[:end]:
        return argv
    os.environ["CKPT_INSPECTOR_NO_CACHE"] = "1"
    return [a for a in argv[:end] if a != "--no-cache"] + argv[end:]

