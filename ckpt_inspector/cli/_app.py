"""``ckpt-inspector [PATH...]``: the desktop app, started only where it can start.

Qt aborts the process (exit 134, blaming a missing ``xcb`` library) when it finds no
display, and a mistyped command would be opened as a file name: both are said here in one
line first (exit 2), before Qt is imported.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable

from ckpt_inspector.cli._errors import EXIT_NOT_SAFE, usage

INFO_HINT = "to read a file on the command line: ckpt-inspector info FILE"


def display_problem(environ: dict[str, str] | None = None) -> str:
    """Why the window has nowhere to show ("" where it has): on Linux and the BSDs Qt needs
    an X11 display (DISPLAY) or a Wayland one (WAYLAND_DISPLAY, or the default socket
    ``$XDG_RUNTIME_DIR/wayland-0``), unless QT_QPA_PLATFORM names a platform that needs
    neither (offscreen, vnc, eglfs...). Windows and macOS always have one."""
    env = os.environ if environ is None else environ
    if not (sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd", "dragonfly"))):
        return ""
    x11 = bool(env.get("DISPLAY"))
    runtime = env.get("XDG_RUNTIME_DIR", "")
    wayland = bool(env.get("WAYLAND_DISPLAY")) or bool(
        runtime and os.path.exists(os.path.join(runtime, "wayland-0")))
    # QT_QPA_PLATFORM is a list of platforms to try, each with options: "wayland;xcb"
    names = [p.split(":")[0].strip() for p in env.get("QT_QPA_PLATFORM", "").split(";")]
    names = [n for n in names if n]
    if not names:
        usable = x11 or wayland
    else:
        usable = any(x11 if n == "xcb" else wayland if n.startswith("wayland") else True
                     for n in names)
    if usable:
        return ""
    return "no display to show the window on (DISPLAY and WAYLAND_DISPLAY are not set)"


def unknown_word(words: Iterable[str], commands: Iterable[str]) -> str:
    """The usage error for the first of ``words`` that is neither an existing file or
    folder nor a URL ("" when they all are), with the command it was likely meant to be."""
    from ckpt_inspector.core.io.urls import is_url

    commands = list(commands)
    words = list(words)
    names = words.index("--") if "--" in words else len(words)  # then only file names
    for i, word in enumerate(words):
        if i == names or os.path.exists(word) or is_url(word):
            continue
        if word.startswith("-") and i < names:
            return f"unknown option {word!r} (ckpt-inspector --help lists the commands)"
        if i == 0 and os.sep not in word and "/" not in word and "." not in word:
            guess = (difflib.get_close_matches(word, commands, n=1, cutoff=0.6)
                     or ["info"])[0]
            return (f"{word!r} is neither a command nor a file; did you mean {guess}? "
                    "(ckpt-inspector --help lists the commands)")
        return f"{word}: no such file or folder, nor a command; {INFO_HINT}"
    return ""


def launch_app(paths: list[str]) -> int:
    """Start the desktop app with ``paths`` open; exit 2 with one line where it has no
    display."""
    if "--" in paths:
        cut = paths.index("--")
        paths = paths[:cut] + paths[cut + 1:]
    problem = display_problem()
    if problem:
        return usage(f"{problem}; {INFO_HINT}")
    try:
        from ckpt_inspector.gui.app import run
    except ImportError as err:
        from ckpt_inspector.cli._errors import fail

        return fail(f"the desktop app cannot start ({err}); the info and scan commands "
                    "still work", EXIT_NOT_SAFE)
    return run(paths)
