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
import time
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

    env = Environment(extensions=["jinja2.ext.loopcontrols", _generation_tag()])
    try:
        tree = env.parse(text)
    except TemplateSyntaxError as err:
        raise _Unread(f"does not parse as Jinja ({err})") from None
    except (RecursionError, ValueError, MemoryError, OverflowError) as err:
        # (an integer of 5,000 digits: Jinja's lexer fails as its renderer would)
        raise _Unread(f"is not read by Jinja ({type(err).__name__})") from None
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


def _generation_tag() -> Any:
    """transformers' ``{% generation %}…{% endgeneration %}`` (it marks what the assistant
    wrote; SmolLM3's and Phi-4's templates use it): read as the body it holds."""
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = frozenset({"generation"})

        def parse(self, parser: Any) -> Any:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    return Generation


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
    loop's ``loop(...)``) to strings it composes, the outputs of its macros, blocks and
    call blocks, the text of Python objects (a repr), and containers a built value is put
    into (``l.append(x)``, through any name bound to the same container). The data a chat
    is rendered from (messages, tools) is not built: whoever wrote the template does not
    choose it. Read to a fixed point; one too intricate to settle is not vouched for."""

    def __init__(self, tree: Any):
        from jinja2 import nodes

        self.built: set[str] = set()  # names, and ".attr" for any namespace's attribute
        self.macros = {m.name: m for m in tree.find_all(nodes.Macro)}
        self.blocks = [*self.macros.values(), *tree.find_all(nodes.CallBlock)]
        self.parameters = {a.name for m in self.blocks for a in m.args}
        self.machinery = _MACHINERY | set(self.macros) | self.parameters
        # names whose value is itself made of text the template (or Jinja) chooses
        self.text = _TEXT_MAKERS | set(self.macros)
        assigns = list(tree.find_all(nodes.Assign))
        fors = list(tree.find_all(nodes.For))
        self.recursive = [f for f in fors if f.recursive]
        withs = list(tree.find_all(nodes.With))
        calls = list(tree.find_all(nodes.Call))
        self.aliases = _Aliases(assigns, fors, withs, calls, self.macros)
        for b in tree.find_all(nodes.AssignBlock):
            self._bind(b.target)
        deadline = time.monotonic() + MAX_ANALYSIS_SECONDS
        for _ in range(MAX_PASSES):  # names built from names built from strings
            self._memo: dict[tuple[str, int], bool] = {}
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
            self._calls(calls)
            if len(self.built) == before:
                return
            if time.monotonic() > deadline:
                break
        raise _Unread("is too intricate to read (what it builds does not settle)")

    def _bind(self, target: Any) -> None:
        from jinja2 import nodes

        for n in [target, *target.find_all((nodes.Name, nodes.NSRef))]:
            if isinstance(n, nodes.Name):
                self.built.add(n.name)  # (binding a name again leaves its aliases be)
            elif isinstance(n, nodes.NSRef):  # any namespace may be this one (an alias)
                self.built.add(f".{n.attr}")

    def _calls(self, calls: list[Any]) -> None:
        """Parameters a call hands a built value (a macro's; any macro's or recursive
        loop's through a name that may alias one), and containers a method puts one in."""
        from jinja2 import nodes

        spread = False
        for c in calls:
            handed = [*c.args, *(k.value for k in c.kwargs),
                      *(x for x in (c.dyn_args, c.dyn_kwargs) if x is not None)]
            f = c.node
            if isinstance(f, nodes.Getattr):  # l.append(x), d.update({...}): l, d built
                if f.attr in _MUTATORS and any(self.builds(v) for v in handed):
                    root = _root_name(f.node)
                    if root is not None:
                        self.built.update(self.aliases.of(root))
                continue
            if not isinstance(f, nodes.Name) or f.name in _GLOBAL_FUNCTIONS:
                continue
            macro = self.macros.get(f.name)
            if macro is not None:
                self._arguments(c, macro)
            elif not spread and any(self.builds(v) for v in handed):
                spread = True  # caller(...), loop(...), or either under another name
        if spread:  # any of them may be handed it
            self.built.update(self.parameters | {"varargs", "kwargs"})
            for loop in self.recursive:
                self._bind(loop.target)
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
        machinery or built names), rather than a literal it writes whole or the chat's data.
        (Known once per node in each pass: a chain of 150 terms is then read once.)"""
        key = ("b", id(e))
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = self._builds(e)
        return found

    def _builds(self, e: Any) -> bool:
        from jinja2 import nodes

        if isinstance(e, nodes.Const):  # whole: only a risky literal (checked on its own)
            return _risky_name(e.value)
        if isinstance(e, nodes.Name):
            return e.name in self.built or e.name in self.text
        if isinstance(e, nodes.Getattr):
            base = e.node
            if f".{e.attr}" in self.built or (isinstance(base, nodes.Name)
                                              and base.name == "self"):
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
        if isinstance(e, (nodes.Compare, nodes.Not, nodes.Test, nodes.Slice, nodes.Sub,
                          nodes.Div, nodes.FloorDiv, nodes.Pow, nodes.Neg, nodes.Pos)):
            return False  # a boolean or a number, or a slice's bounds
        return any(self.builds(x) for x in e.iter_child_nodes())

    def _filter_builds(self, e: Any) -> bool:
        args = [x for x in e.iter_child_nodes() if x is not e.node]
        if e.name in _NUMBERS:  # a number (int and float may hand back their default)
            return e.name in ("int", "float") and any(self._hands_on(a) for a in args)
        if e.name == "format":  # printf: %c makes any character
            return any(self._composes(x) for x in e.iter_child_nodes())
        if any(self._hands_on(a) for a in args):
            return True  # default(x), batch(n, x), replace(a, x), join(x): x in the result
        source = e.node
        if source is None:
            return False
        if e.name in _DATA_FILTERS and e.name not in _STRINGY:
            return self.builds(source)
        # text from its input: built, a literal's characters, or the text of an object
        # that is not plain data (a repr: '<list_reverseiterator …>')
        return self.builds(source) or self._composes(source) or not self._plain(source)

    def _hands_on(self, arg: Any) -> bool:
        """Whether a filter's argument, which may end up in its result, is built or a
        literal holding an underscore."""
        from jinja2 import nodes

        return self.builds(arg) or any(
            isinstance(n, nodes.Const) and isinstance(n.value, str) and "_" in n.value
            for n in [arg, *arg.find_all(nodes.Const)])

    def _plain(self, e: Any) -> bool:
        """Whether ``e`` is plain data whose text holds only what the data does: the
        chat's values, looked into by plain keys, literals and lists of them, and text
        filters of those (not calls, iterators or Jinja's objects)."""
        key = ("p", id(e))
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = self._plain_uncached(e)
        return found

    def _plain_uncached(self, e: Any) -> bool:
        from jinja2 import nodes

        if isinstance(e, nodes.Const):
            return not (isinstance(e.value, str) and "_" in e.value)
        if isinstance(e, nodes.Name):
            return e.name not in self.machinery and e.name not in self.built
        if isinstance(e, nodes.Getattr):
            return self._plain(e.node)
        if isinstance(e, nodes.Getitem):
            return self._plain(e.node) and (isinstance(e.arg, nodes.Slice)
                                            or self._plain(e.arg))
        if isinstance(e, (nodes.List, nodes.Tuple)):
            return all(self._plain(i) for i in e.items)
        if isinstance(e, nodes.CondExpr):
            return self._plain(e.expr1) and (e.expr2 is None or self._plain(e.expr2))
        if isinstance(e, nodes.Filter):
            return e.name in _PLAIN_TEXT and e.node is not None and self._plain(e.node) \
                and not any(self._hands_on(a) for a in e.iter_child_nodes() if a is not e.node)
        return False

    def _call_builds(self, e: Any) -> bool:
        from jinja2 import nodes

        f = e.node
        if isinstance(f, nodes.Name) and f.name == "range":
            return False  # numbers
        if isinstance(f, nodes.Name) and f.name in ("namespace", "dict"):
            # a namespace or dict holds what it is given
            return any(self.builds(x) for x in e.iter_child_nodes() if x is not f)
        if isinstance(f, nodes.Name) and (f.name in self.machinery
                                          or f.name not in _GLOBAL_FUNCTIONS):
            return True  # a macro's, caller's or loop's output (or one under another name)
        if isinstance(f, nodes.Getattr) and isinstance(f.node, nodes.Name) and \
                f.node.name == "self":
            return True  # a block's output
        if isinstance(f, nodes.Getattr):  # a method: of text the template chooses?
            receiver = f.node
            return self.builds(receiver) or self._makes_text(receiver) or (
                isinstance(receiver, nodes.Const) and isinstance(receiver.value, str)
            ) or not self._plain(receiver) or any(
                self._hands_on(x) for x in e.iter_child_nodes() if x is not f)
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

        key = ("c", id(e))
        found = self._memo.get(key)
        if found is not None:
            return found
        self._memo[key] = found = self._composes_uncached(e, nodes)
        return found

    def _composes_uncached(self, e: Any, nodes: Any) -> bool:
        if isinstance(e, nodes.Const):
            return isinstance(e.value, str)
        if isinstance(e, nodes.Name) and e.name in self.text:
            return True
        return self.builds(e) or any(self._composes(x) for x in e.iter_child_nodes())


class _Aliases:
    """Names that may hold the same container: bound one to another (``set b = a``, a loop
    over ``[a]``, ``with``), or a macro's parameter handed a name. Union-find."""

    def __init__(self, assigns: list[Any], fors: list[Any], withs: list[Any],
                 calls: list[Any], macros: dict[str, Any]):
        from jinja2 import nodes

        self.parent: dict[str, str] = {}

        def names(e: Any) -> list[str]:
            """The names whose container ``e`` may be: itself, one looked into, or an
            item of a list, tuple or dict literal."""
            if isinstance(e, (nodes.List, nodes.Tuple)):
                return [n for i in e.items for n in names(i)]
            if isinstance(e, nodes.Dict):
                return [n for p in e.items for n in names(p.value)]
            root = _root_name(e)
            return [root] if root is not None else []

        pairs: list[tuple[Any, Any]] = [(a.target, a.node) for a in assigns]
        pairs += [(f.target, f.iter) for f in fors]
        pairs += [(t, v) for w in withs for t, v in zip(w.targets, w.values)]
        for target, value in pairs:
            for t in names(target):
                for v in names(value):
                    self.union(t, v)
        for c in calls:
            macro = macros.get(c.node.name) if isinstance(c.node, nodes.Name) else None
            if macro is None:
                continue
            for a, v in zip(macro.args, c.args):
                for name in names(v):
                    self.union(a.name, name)
        self.groups: dict[str, set[str]] = {}
        for name in list(self.parent):
            self.groups.setdefault(self.find(name), set()).add(name)

    def find(self, x: str) -> str:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(x, x) != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        self.parent.setdefault(ra, ra)
        self.parent.setdefault(rb, rb)
        if ra != rb:
            self.parent[ra] = rb

    def of(self, name: str) -> set[str]:
        return self.groups.get(self.find(name), set()) | {name}


def _root_name(e: Any) -> str | None:
    """The name an attribute or item chain starts from (``ns.items`` -> ``ns``)."""
    from jinja2 import nodes

    while isinstance(e, (nodes.Getattr, nodes.Getitem)):
        e = e.node
    return e.name if isinstance(e, nodes.Name) else None


MAX_PASSES = 64
MAX_ANALYSIS_SECONDS = 3.0
# methods that put what they are given into their object
_MUTATORS = frozenset({"append", "extend", "insert", "update", "setdefault", "add",
                       "__setitem__"})
# functions a loader or Jinja gives the template, whose result is not the template's text
_GLOBAL_FUNCTIONS = frozenset({"range", "dict", "namespace", "raise_exception",
                               "strftime_now"})
# filters whose result is a number
_NUMBERS = frozenset({"length", "count", "int", "float", "abs", "round", "wordcount",
                      "filesizeformat", "bool"})
# text filters that keep plain data plain
_PLAIN_TEXT = frozenset({"trim", "lower", "upper", "title", "capitalize", "string", "e",
                         "escape", "safe", "tojson", "default", "d", "length", "count"})


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
    if n.name in ("map", "select", "reject", "selectattr", "rejectattr") and n.args and \
            not isinstance(n.args[0], nodes.Const):
        return f"has {n.name} apply a filter or read an attribute it computes"
    if n.name in _BY_NAME and (
            any(isinstance(v, nodes.Const) and v.value == "attr" for v in n.args)
            or any(not isinstance(v, nodes.Const) and flow.builds(v) for v in values)
            or any(k.key == "attribute" and not isinstance(k.value, nodes.Const)
                   for k in n.kwargs)):
        return f"has {n.name} fetch attributes by a computed name"
    return None
