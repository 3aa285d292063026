"""``ckpt-inspector [PATH...]``: the desktop app, started only where it can start.

Qt aborts the process (exit 134, blaming a missing ``xcb`` library) when it finds no
display, and a mistyped command would be opened as a file name: both are said here in one
line first (exit 2), before Qt is imported.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
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
    if not usable:
        return "no display to show the window on (DISPLAY and WAYLAND_DISPLAY are not set)"
    if names and not all(n == "xcb" or n.startswith("wayland") for n in names):
        return ""  # a platform of its own (offscreen, vnc...) may be tried
    tried = []
    # Wayland first: asking X on a Wayland desktop may start Xwayland for nothing
    if wayland and (not names or any(n.startswith("wayland") for n in names)):
        name = env.get("WAYLAND_DISPLAY") or "wayland-0"
        path = name if os.path.isabs(name) else os.path.join(runtime, name)
        if _socket_answers(path) is not False:
            return ""
        tried.append(f"WAYLAND_DISPLAY={name}" if env.get("WAYLAND_DISPLAY") else path)
    if x11 and (not names or "xcb" in names):
        answer = _x11_answers(env["DISPLAY"])
        if answer is not False:
            return ""
        tried.append(f"DISPLAY={env['DISPLAY']}")
    if not tried:
        return ""
    why = "the display server is not running" + (
        ", or an ssh session's X forwarding ended" if x11 else "")
    return f"no display to show the window on (nothing answers at {' or '.join(tried)}: {why})"


# Qt aborts the process when the display it is given does not answer: asked here first,
# and only a definite "nothing there" counts (an address this does not understand, or one
# that does not answer in time, is left to Qt)
_X11 = re.compile(r"(?P<host>[^:/]*):(?P<num>\d+)(?:\.\d+)?")


def _x11_answers(display: str) -> bool | None:
    """Whether an X server listens at ``display`` (``:0``, ``unix:1``, ``host:10.0``);
    None where it cannot be told."""
    m = _X11.fullmatch(display)
    if m is None:
        return None
    host, num = m["host"], int(m["num"])
    answers = []
    if host in ("", "unix"):
        path = f"/tmp/.X11-unix/X{num}"
        answers += [_socket_answers(path), _socket_answers("\0" + path)]  # and the abstract
    if host != "unix":  # libxcb tries TCP too for ":N" (an X server on Windows, WSL)
        answers.append(_tcp_answers(host or "127.0.0.1", 6000 + num))
    return True if True in answers else None if None in answers else False


def _tcp_answers(host: str, port: int) -> bool | None:
    """Whether something accepts connections at ``host:port``; a name other than localhost
    is not looked up (a lookup cannot be bounded in time): None."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            return None
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:  # a timeout, no route: not a definite answer
        return None


def _socket_answers(path: str) -> bool | None:
    """Whether something accepts connections on the Unix socket ``path``."""
    if not hasattr(socket, "AF_UNIX"):
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(path)
            return True
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except (OSError, ValueError):  # an abstract name where there are none, a timeout
            return None


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
            later = next((w for w in words[i + 1:names] if w in commands), None)
            if later is not None:  # ckpt-inspector --json info FILE
                return (f"{word} goes after the command: ckpt-inspector {later} {word} ... "
                        "(ckpt-inspector --help lists the commands)")
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
