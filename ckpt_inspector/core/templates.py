"""Chat templates: Jinja code a model file carries, which loaders render.

A GGUF file keeps its chat template in ``tokenizer.chat_template`` (and named variants,
``tokenizer.chat_template.<name>``). llama-cpp-python before 0.2.72 rendered it with an
unsandboxed Jinja environment (CVE-2024-34359), where an expression can climb from any
string to Python's internals (``''.__class__.__mro__``...) and run a command: loading such
a file runs code. The template is never rendered here. It is read for what real chat
templates never hold inside their ``{{ }}`` and ``{% %}`` blocks: dunder names, the
``attr`` filter that fetches them by a computed name, escapes that spell an underscore, and
the names of Python's machinery. One of those is a finding, since a template that needs
them is not formatting a chat.
"""

from __future__ import annotations

import re
from typing import Any

from ckpt_inspector.core.findings import DANGEROUS, Finding

MAX_TEMPLATE = 1 << 20  # a longer template is checked in its first MiB and said so
_BLOCKS = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)
# what reaches Python from inside a Jinja expression; each of these is needed to climb
# out of the template's data (an underscore spelled by an escape or %c counts as one)
_REACH = re.compile(
    r"__|\|\s*attr\b|\battr\s*\(|\\x5f|\\u005f|\\U0000005f|\\137|%c|\bmro\b|subclasses"
    r"|\bglobals\b|builtins|\bimport\b|\bpopen\b|\beval\b|\bexec\b|\bgetattr\b"
    r"|\bos\.|\bsubprocess\b|_TemplateReference|\bcycler\b|\bjoiner\b|\blipsum\b", re.I)


def is_template_key(key: str) -> bool:
    """A GGUF key that holds a chat template."""
    return key == "tokenizer.chat_template" or key.startswith("tokenizer.chat_template.")


def template_findings(text: str, where: str) -> list[Finding]:
    """What in the template ``text`` (stored under ``where``) reaches beyond formatting:
    read as Jinja parses it where jinja2 is installed (a denylist of spellings cannot hold:
    ``'_'``, ``'%c'|format(95)``, ``['_','_']|join`` or a slice of any name spell the
    underscores a dunder needs); by the spellings above where it is not."""
    head = text[:MAX_TEMPLATE]
    try:
        reach = _parsed_reach(head)
    except ImportError:
        reach = _spelled_reach(head)
    except _Unread as err:  # a loader's Jinja refuses it too, but it is not vouched for
        return [Finding("needs-trust", "unread-template",
                        f"its chat template {err}: what it does is not known", where)]
    if reach is not None:
        return [Finding(
            DANGEROUS, "code-in-template",
            f"its chat template {reach}: a loader that renders it without a sandbox "
            "(llama-cpp-python < 0.2.72) can be made to run code by it", where)]
    if len(text) > MAX_TEMPLATE:
        return [Finding("needs-trust", "unread-template",
                        f"its chat template is {len(text):,} characters: only the first "
                        f"{MAX_TEMPLATE:,} were checked", where)]
    return []


class _Unread(Exception):
    """The template could not be read as Jinja."""


def _spelled_reach(text: str) -> str | None:
    for block in _BLOCKS.finditer(text):
        found = _REACH.search(block.group())
        if found is not None:
            return f"reaches Python's internals ({found.group()!r})"
    return None


# filters whose result is a string made from their input: a key built with one is computed
_STRINGY = frozenset({"join", "format", "replace", "string", "lower", "upper", "title",
                      "capitalize", "trim", "first", "last", "reverse", "center", "indent",
                      "truncate", "striptags", "urlencode", "wordwrap", "tojson", "safe",
                      "escape", "e", "forceescape", "list", "sum", "min", "max", "random"})
# filters and tests that fetch an attribute by a name given as an argument
_BY_NAME = frozenset({"map", "select", "reject", "selectattr", "rejectattr", "sort",
                      "groupby", "unique", "sum", "min", "max", "dictsort"})


def _parsed_reach(text: str) -> str | None:
    """How the parsed template reaches an attribute no chat template needs, or None:
    a name starting with ``_`` read as an attribute or key, the ``attr`` filter, a key
    computed from strings, an attribute name a filter takes from a computed value."""
    from jinja2 import Environment, TemplateSyntaxError, nodes

    env = Environment(extensions=["jinja2.ext.loopcontrols"])
    try:
        tree = env.parse(text)
    except TemplateSyntaxError as err:
        raise _Unread(f"does not parse as Jinja ({err})") from None
    except RecursionError:
        raise _Unread("is nested too deep to read") from None
    built = _built_names(tree)
    for n in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Test)):
        reach = _reach_of(n, built)
        if reach is not None:
            return reach
    return None


def _under(value: object) -> bool:
    return isinstance(value, str) and value.startswith("_")


def _stringy(expr: Any, names: set[str]) -> bool:
    """Whether ``expr`` makes a string (from literals, ``~``, ``%``, string filters or
    names set from those)."""
    from jinja2 import nodes

    for n in [expr, *expr.find_all(nodes.Node)]:
        if isinstance(n, nodes.Const) and isinstance(n.value, str):
            return True
        if isinstance(n, (nodes.Concat, nodes.Mod)):
            return True
        if isinstance(n, nodes.Filter) and n.name in _STRINGY:
            return True
        if isinstance(n, nodes.Name) and n.name in names:
            return True
    return False


def _built_names(tree: Any) -> set[str]:
    """Names the template sets from strings (a key spelled piece by piece)."""
    from jinja2 import nodes

    built: set[str] = set()
    for _ in range(3):  # names built from names built from strings
        for a in tree.find_all(nodes.Assign):
            if isinstance(a.target, nodes.Name) and _stringy(a.node, built):
                built.add(a.target.name)
        for b in tree.find_all(nodes.AssignBlock):
            if isinstance(b.target, nodes.Name):
                built.add(b.target.name)
    return built


def _reach_of(n: Any, built: set[str]) -> str | None:
    from jinja2 import nodes

    if isinstance(n, nodes.Getattr):
        return f"reads the attribute {n.attr!r}" if _under(n.attr) else None
    if isinstance(n, nodes.Getitem):
        if isinstance(n.arg, nodes.Const):
            return f"reads the item {n.arg.value!r}" if _under(n.arg.value) else None
        if not isinstance(n.arg, nodes.Slice) and _stringy(n.arg, built):
            return "reads an item by a name it builds from strings"
        return None
    if n.name == "attr":
        return "fetches attributes by name (the attr filter)"
    values = [*n.args, *(k.value for k in n.kwargs)]
    if any(isinstance(v, nodes.Const) and _under(v.value) for v in values):
        return f"passes a name starting with '_' to {n.name}"
    if n.name in _BY_NAME and (
            any(isinstance(v, nodes.Const) and v.value == "attr" for v in n.args)
            or any(k.key == "attribute" and not isinstance(k.value, nodes.Const)
                   for k in n.kwargs)):
        return f"has {n.name} fetch attributes by a computed name"
    return None
