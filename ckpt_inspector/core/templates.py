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

MAX_TEMPLATE = 128 << 10  # a longer one is checked in its first 128 KiB and said so (the
# largest of 62 real ones is 40 KB; Jinja parses a MiB of odd text in 10-40 s)
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
    a name starting with ``_`` (or one of Python's internals) read as an attribute or
    key, the ``attr`` filter, a key the template builds, an attribute name a filter
    takes from a built value; and such a name written anywhere."""
    from jinja2 import Environment, TemplateSyntaxError, nodes

    env = Environment(extensions=["jinja2.ext.loopcontrols"])
    try:
        tree = env.parse(text)
    except TemplateSyntaxError as err:
        raise _Unread(f"does not parse as Jinja ({err})") from None
    except RecursionError:
        raise _Unread("is nested too deep to read") from None
    try:
        flow = _Flow(tree)
        for n in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Test)):
            reach = _reach_of(n, flow)
            if reach is not None:
                return reach
        for n in tree.find_all((nodes.Const, nodes.Keyword)):
            name = n.value if isinstance(n, nodes.Const) else n.key
            if _internal_path(name):  # wherever it is written: a loop, a macro hand it on
                return f"names Python's internals ({name!r})"
    except RecursionError:  # Jinja's own walk recurses: it would fail to render it too
        raise _Unread("is nested too deep to read") from None
    return None


def _under(value: object) -> bool:
    return isinstance(value, str) and value.startswith("_")


def _internal(value: object) -> bool:
    return isinstance(value, str) and _INTERNAL.match(value) is not None


def _internal_path(value: object) -> bool:
    """A name, or a dotted path as the attribute filters take it (``'0.__init__'``), with
    a part that is one of Python's internals."""
    return isinstance(value, str) and any(_internal(p) for p in value.split("."))


def _risky_name(value: object) -> bool:
    """A name no chat template reads: starting with ``_``, or one of Python's internals;
    in a dotted path, any part."""
    return isinstance(value, str) and any(_under(p) or _internal(p) for p in value.split("."))


# Jinja's own globals and the template's machinery: not the data a chat is rendered from
# (their text holds underscores: ``lipsum|string`` is '<function generate_lorem_ipsum …>')
_MACHINERY = frozenset({"lipsum", "cycler", "joiner", "namespace", "range", "dict", "self",
                        "loop", "caller", "varargs", "kwargs"})
# those whose value is text, or turns into text with underscores in it (a function's name)
_TEXT_MAKERS = frozenset({"lipsum", "cycler", "joiner", "caller", "varargs", "kwargs"})


class _Flow:
    """Which values the template may build from its own text: names bound (by ``set``,
    ``set ns.attr``, a loop, ``with``, a macro's or call block's parameter, a recursive
    loop's ``loop(...)``) to strings it composes, and the outputs of its macros, blocks
    and call blocks. The data a chat is rendered from (messages, tools) is not built:
    whoever wrote the template does not choose it."""

    def __init__(self, tree: Any):
        from jinja2 import nodes

        self.built: set[str] = set()  # names, and "ns.attr" for a namespace's attribute
        self.macros = {m.name: m for m in tree.find_all(nodes.Macro)}
        self.blocks = [*self.macros.values(), *tree.find_all(nodes.CallBlock)]
        self.parameters = {a.name for m in self.blocks for a in m.args}
        self.machinery = _MACHINERY | set(self.macros) | self.parameters
        # names whose value is itself made of text the template (or Jinja) chooses
        self.text = _TEXT_MAKERS | set(self.macros)
        assigns = list(tree.find_all(nodes.Assign))
        fors = list(tree.find_all(nodes.For))
        withs = list(tree.find_all(nodes.With))
        calls = [c for c in tree.find_all(nodes.Call) if isinstance(c.node, nodes.Name)]
        for b in tree.find_all(nodes.AssignBlock):
            self._bind(b.target)
        for _ in range(8):  # names built from names built from strings
            before = len(self.built)
            for a in assigns:
                if self.builds(a.node):
                    self._bind(a.target)
            for f in fors:
                if self.builds(f.iter):
                    self._bind(f.target)
            for w in withs:
                for t, v in zip(w.targets, w.values):
                    if self.builds(v):
                        self._bind(t)
            self._parameters(calls, fors)
            if len(self.built) == before:
                break

    def _bind(self, target: Any) -> None:
        from jinja2 import nodes

        for n in [target, *target.find_all((nodes.Name, nodes.NSRef))]:
            if isinstance(n, nodes.Name):
                self.built.add(n.name)
            elif isinstance(n, nodes.NSRef):
                self.built.add(f"{n.name}.{n.attr}")

    def _parameters(self, calls: list[Any], fors: list[Any]) -> None:
        """Parameters of macros and call blocks a call or a default hands a built value,
        and the targets of a recursive loop whose ``loop(...)`` is handed one."""
        for c in calls:
            handed = [*c.args, *(k.value for k in c.kwargs),
                      *(x for x in (c.dyn_args, c.dyn_kwargs) if x is not None)]
            macro = self.macros.get(c.node.name)
            if macro is not None:
                self._arguments(c, macro)
            elif c.node.name == "loop":
                if any(self.builds(v) for v in handed):
                    for f in fors:
                        if f.recursive:
                            self._bind(f.target)
            elif (c.node.name == "caller" or c.node.name in self.parameters) and any(
                    self.builds(v) for v in handed):
                # a call block's caller(...), or a macro handed on as an argument: any
                self.built.update(self.parameters | {"varargs", "kwargs"})
        for m in self.blocks:
            names = [a.name for a in m.args]
            for name, default in zip(names[len(names) - len(m.defaults):], m.defaults):
                if self.builds(default):
                    self.built.add(name)

    def _arguments(self, c: Any, macro: Any) -> None:
        """The parameters of ``macro`` that the call ``c`` hands a built value."""
        names = [a.name for a in macro.args]
        for i, v in enumerate(c.args):
            if self.builds(v):
                self.built.add(names[i] if i < len(names) else "varargs")
        for k in c.kwargs:
            if self.builds(k.value):
                self.built.add(k.key if k.key in names else "kwargs")
        if any(self.builds(x) for x in (c.dyn_args, c.dyn_kwargs) if x is not None):
            self.built.update(names)

    def builds(self, e: Any) -> bool:
        """Whether ``e`` may be a string the template composes (from its own text, Jinja's
        machinery or built names), rather than a literal it writes whole or the chat's data."""
        from jinja2 import nodes

        if isinstance(e, nodes.Const):  # whole: only a risky literal (checked on its own)
            return _risky_name(e.value)
        if isinstance(e, nodes.Name):
            return e.name in self.built or e.name in self.text
        if isinstance(e, nodes.Getattr):
            base = e.node
            if isinstance(base, nodes.Name) and (f"{base.name}.{e.attr}" in self.built
                                                 or base.name == "self"):
                return True  # a namespace's built attribute; a block
            return self.builds(base)
        if isinstance(e, nodes.Getitem):  # a character of a built or literal string
            return self.builds(e.node) or (isinstance(e.node, nodes.Const)
                                           and isinstance(e.node.value, str))
        if isinstance(e, nodes.CondExpr):
            return self.builds(e.expr1) or (e.expr2 is not None and self.builds(e.expr2))
        if isinstance(e, (nodes.List, nodes.Tuple)):
            return any(self.builds(i) for i in e.items)
        if isinstance(e, nodes.Dict):
            return any(self.builds(p.key) or self.builds(p.value) for p in e.items)
        if isinstance(e, (nodes.Concat, nodes.Mod)):
            return True  # text put together, or printf (%c makes any character)
        if isinstance(e, (nodes.Add, nodes.Mul, nodes.Or, nodes.And)):
            return any(self._composes(x) for x in e.iter_child_nodes())
        if isinstance(e, nodes.Filter):
            return self._filter_builds(e)
        if isinstance(e, nodes.Call):
            return self._call_builds(e)
        if isinstance(e, (nodes.Compare, nodes.Not, nodes.Test, nodes.Slice)):
            return False  # a boolean, or a slice's bounds
        return any(self.builds(x) for x in e.iter_child_nodes())

    def _filter_builds(self, e: Any) -> bool:
        parts = list(e.iter_child_nodes())  # the input, the arguments
        if e.name == "format":  # printf: %c makes any character
            return any(self._composes(x) for x in parts)
        if e.name in _STRINGY or e.name not in _DATA_FILTERS:
            # text from what it is given: built, risky, or Jinja's own (a repr)
            return any(self.builds(x) or self._makes_text(x) for x in parts)
        return e.node is not None and self.builds(e.node)

    def _call_builds(self, e: Any) -> bool:
        from jinja2 import nodes

        f = e.node
        if isinstance(f, nodes.Name) and f.name in ("namespace", "dict", "range"):
            # a namespace or dict holds what it is given, a range numbers
            return any(self.builds(x) for x in e.iter_child_nodes() if x is not f)
        if isinstance(f, nodes.Name) and f.name in self.machinery:
            return True  # a macro's, caller's or loop's output: the template's text
        if isinstance(f, nodes.Getattr) and isinstance(f.node, nodes.Name) and \
                f.node.name == "self":
            return True  # a block's output
        if isinstance(f, nodes.Getattr):  # a method: of text the template chooses?
            receiver = f.node
            return self.builds(receiver) or self._makes_text(receiver) or (
                isinstance(receiver, nodes.Const) and isinstance(receiver.value, str)
            ) or any(self.builds(x) for x in e.iter_child_nodes() if x is not f)
        # a function the loader gives (strftime_now('%A')): what it is handed
        return any(self.builds(x) for x in e.iter_child_nodes())

    def _makes_text(self, e: Any) -> bool:
        """Whether ``e`` holds one of Jinja's objects or the template's macros, whose text
        (a repr: '<function generate_lorem_ipsum …>') holds underscores."""
        from jinja2 import nodes

        return any(isinstance(n, nodes.Name) and n.name in self.text
                   for n in [e, *e.find_all(nodes.Name)])

    def _composes(self, e: Any) -> bool:
        """Whether ``e``, a part of a composition, brings in text the template chooses:
        any literal string, Jinja's machinery, or a built value."""
        from jinja2 import nodes

        for n in [e, *e.find_all((nodes.Const, nodes.Name))]:
            if isinstance(n, nodes.Const) and isinstance(n.value, str):
                return True
            if isinstance(n, nodes.Name) and n.name in self.text:
                return True
        return self.builds(e)


# filters whose result is data taken from their input, not text they make
_DATA_FILTERS = frozenset({"length", "count", "int", "float", "abs", "round", "default", "d",
                           "items", "dictsort", "batch", "slice", "groupby", "map", "select",
                           "reject", "selectattr", "rejectattr", "sort", "unique", "sum",
                           "min", "max", "list", "first", "last", "reverse", "random",
                           "tojson", "trim", "lower", "upper", "title", "capitalize",
                           "wordcount", "filesizeformat", "bool"})


def _reach_of(n: Any, flow: _Flow) -> str | None:
    from jinja2 import nodes

    if isinstance(n, nodes.Getattr):
        return f"reads the attribute {n.attr!r}" if _risky_name(n.attr) else None
    if isinstance(n, nodes.Getitem):
        if isinstance(n.arg, nodes.Const):
            return f"reads the item {n.arg.value!r}" if _risky_name(n.arg.value) else None
        if not isinstance(n.arg, nodes.Slice) and flow.builds(n.arg):
            return "reads an item by a name it builds"
        return None
    if n.name == "attr":
        return "fetches attributes by name (the attr filter)"
    values = [*n.args, *(k.value for k in n.kwargs)]
    if isinstance(n, nodes.Filter) and n.name in _TEXT_ONLY:
        values = [k.value for k in n.kwargs]  # text to work on (replace('_', ' ')), no name
    if any(isinstance(v, nodes.Const) and _risky_name(v.value) for v in values):
        return f"passes a name starting with '_' (or one of Python's internals) to {n.name}"
    if n.name in _BY_NAME and (
            any(isinstance(v, nodes.Const) and v.value == "attr" for v in n.args)
            or any(not isinstance(v, nodes.Const) and flow.builds(v) for v in values)
            or any(k.key == "attribute" and not isinstance(k.value, nodes.Const)
                   for k in n.kwargs)):
        return f"has {n.name} fetch attributes by a computed name"
    return None
