"""Chat templates: Jinja code a model file carries, which loaders render.

A GGUF file keeps its chat template in ``tokenizer.chat_template`` (and named variants,
``tokenizer.chat_template.<name>``). llama-cpp-python before 0.2.72 rendered it with an
unsandboxed Jinja environment (CVE-2024-34359), where an expression can climb from any
string to Python's internals (``''.__class__.__mro__``...) and run a command: loading such
a file runs code. The template is never rendered here. It is read for what real chat
templates never hold inside their ``{{ }}`` and ``{% %}`` blocks: dunder names, the
``attr`` filter that fetches them by a computed name, escapes that spell an underscore, and
the names of Python's machinery, among them those of frames and generators, which climb
without a single underscore (``([1]|map('string')).gi_frame.f_builtins['exec']``). Any
such name, wherever it is written (a loop's list, a macro's argument, a keyword), and any
lookup by a name the template builds, is a finding: a template that needs them is not
formatting a chat.
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
    r"|\bos\.|\bsubprocess\b|_TemplateReference|\bcycler\b|\bjoiner\b|\blipsum\b"
    r"|\b(?:gi|cr|ag|tb|f)_[a-z]+\b", re.I)
# Python's own attribute names: dunders, and those of frames, generators, coroutines and
# tracebacks (a filter such as map returns a generator: its frame holds the builtins)
_INTERNAL = re.compile(
    r"__|(?:gi_(?:frame|code|yieldfrom|running|suspended)|cr_(?:frame|code|await|origin|"
    r"running|suspended)|ag_(?:frame|code|await|running)|tb_(?:frame|next|lasti|lineno)|"
    r"f_(?:back|builtins|code|globals|locals|trace|lasti|lineno|generator)|mro|"
    r"func_globals)\Z")


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
# string filters whose positional arguments are text, never an attribute's name (their
# result, if used as a name, is caught as built from strings)
_TEXT_ONLY = frozenset({"replace", "format", "center", "indent", "truncate", "wordwrap",
                        "trim", "string", "lower", "upper", "title", "capitalize",
                        "striptags", "urlencode", "tojson", "safe", "escape", "e",
                        "forceescape", "first", "last", "reverse", "random"})
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
    for n in tree.find_all((nodes.Const, nodes.Keyword)):
        name = n.value if isinstance(n, nodes.Const) else n.key
        if _internal(name):  # wherever it is written: a loop, a macro may hand it on
            return f"names Python's internals ({name!r})"
    return None


def _under(value: object) -> bool:
    return isinstance(value, str) and value.startswith("_")


def _internal(value: object) -> bool:
    return isinstance(value, str) and _INTERNAL.match(value) is not None


def _stringy(expr: Any, names: set[str]) -> bool:
    """Whether ``expr`` may make a name of Python's internals: from a literal that starts
    with an underscore, ``~``, ``%``, string filters, or names set from those (a literal
    such as ``'content'`` cannot, and one of the internals is a finding of its own)."""
    from jinja2 import nodes

    for n in [expr, *expr.find_all(nodes.Node)]:
        if isinstance(n, nodes.Const) and (_under(n.value) or _internal(n.value)):
            return True
        if isinstance(n, (nodes.Concat, nodes.Mod)):
            return True
        if isinstance(n, nodes.Filter) and n.name in _STRINGY:
            return True
        if isinstance(n, nodes.Name) and n.name in names:
            return True
    return False


def _targets(target: Any) -> list[str]:
    from jinja2 import nodes

    return [n.name for n in [target, *target.find_all(nodes.Name)]
            if isinstance(n, nodes.Name)]


def _built_names(tree: Any) -> set[str]:
    """Names the template may bind to a string it builds (a key spelled piece by piece):
    by ``set``, a loop over such strings, ``with``, and a macro's or call block's
    parameters where any call hands it one."""
    from jinja2 import nodes

    built: set[str] = set()
    macros = {m.name: m for m in tree.find_all(nodes.Macro)}
    for _ in range(4):  # names built from names built from strings
        for a in tree.find_all(nodes.Assign):
            if _stringy(a.node, built):
                built.update(_targets(a.target))
        for b in tree.find_all(nodes.AssignBlock):
            built.update(_targets(b.target))
        for f in tree.find_all(nodes.For):
            if _stringy(f.iter, built):
                built.update(_targets(f.target))
        for w in tree.find_all(nodes.With):
            if any(_stringy(v, built) for v in w.values):
                for t in w.targets:
                    built.update(_targets(t))
        _parameters(tree, macros, built)
    return built


def _parameters(tree: Any, macros: dict[str, Any], built: set[str]) -> None:
    """Add to ``built`` the parameters of macros and call blocks that a call or a default
    may hand a built string."""
    from jinja2 import nodes

    blocks = [*macros.values(), *tree.find_all(nodes.CallBlock)]
    parameters = {a.name for m in blocks for a in m.args}
    for c in tree.find_all(nodes.Call):
        if not isinstance(c.node, nodes.Name):
            continue  # a method (text.split('_')): no macro of the template's
        macro = macros.get(c.node.name)
        if macro is not None:  # each parameter a built string is handed to
            names = [a.name for a in macro.args]
            for i, v in enumerate(c.args):
                if _stringy(v, built):
                    built.add(names[i] if i < len(names) else "varargs")
            for k in c.kwargs:
                if _stringy(k.value, built):
                    built.add(k.key if k.key in names else "kwargs")
            if any(_stringy(x, built) for x in (c.dyn_args, c.dyn_kwargs) if x is not None):
                built.update(names)
        elif c.node.name == "caller" or c.node.name in parameters:
            # a call block's caller(...), or a macro handed on as an argument: any of them
            handed = [*c.args, *(k.value for k in c.kwargs),
                      *(x for x in (c.dyn_args, c.dyn_kwargs) if x is not None)]
            if any(_stringy(v, built) for v in handed):
                built.update(parameters | {"varargs", "kwargs"})
    for m in blocks:
        names = [a.name for a in m.args]
        for name, default in zip(names[len(names) - len(m.defaults):], m.defaults):
            if _stringy(default, built):
                built.add(name)


def _reach_of(n: Any, built: set[str]) -> str | None:
    from jinja2 import nodes

    if isinstance(n, nodes.Getattr):
        return f"reads the attribute {n.attr!r}" if _under(n.attr) or _internal(n.attr) \
            else None
    if isinstance(n, nodes.Getitem):
        if isinstance(n.arg, nodes.Const):
            return f"reads the item {n.arg.value!r}" if _under(n.arg.value) or \
                _internal(n.arg.value) else None
        if not isinstance(n.arg, nodes.Slice) and _stringy(n.arg, built):
            return "reads an item by a name it builds from strings"
        return None
    if n.name == "attr":
        return "fetches attributes by name (the attr filter)"
    values = [*n.args, *(k.value for k in n.kwargs)]
    if isinstance(n, nodes.Filter) and n.name in _TEXT_ONLY:
        values = [k.value for k in n.kwargs]  # text to work on (replace('_', ' ')), no name
    if any(isinstance(v, nodes.Const) and _under(v.value) for v in values):
        return f"passes a name starting with '_' to {n.name}"
    if n.name in _BY_NAME and (
            any(isinstance(v, nodes.Const) and v.value == "attr" for v in n.args)
            or any(k.key == "attribute" and not isinstance(k.value, nodes.Const)
                   for k in n.kwargs)):
        return f"has {n.name} fetch attributes by a computed name"
    return None
