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
    """What in the template ``text`` (stored under ``where``) reaches beyond formatting."""
    head = text[:MAX_TEMPLATE]
    for block in _BLOCKS.finditer(head):
        found = _REACH.search(block.group())
        if found is None:
            continue
        snippet = block.group()
        if len(snippet) > 120:
            snippet = snippet[:117] + "…"
        return [Finding(
            DANGEROUS, "code-in-template",
            f"its chat template reaches Python's internals ({found.group()!r} in {snippet!r}): "
            "a loader that renders it without a sandbox (llama-cpp-python < 0.2.72) runs "
            "what it says", where)]
    if len(text) > MAX_TEMPLATE:
        return [Finding("needs-trust", "unread-template",
                        f"its chat template is {len(text):,} characters: only the first "
                        f"{MAX_TEMPLATE:,} were checked", where)]
    return []
