"""Python code a Hugging Face folder asks its loaders to import: ``auto_map``.

``config.json`` (and the tokenizer's, processor's and image processor's configs) may map
an Auto class to ``module.Class``: ``from_pretrained(folder, trust_remote_code=True)``
then imports ``module.py`` from the folder (or, written ``repo--module.Class``, from
another repository on the Hub) and runs its code. No weights file is involved, so
nothing else in the verdict would say so: each such module is a needs-trust finding (at a
URL, config.json's only: the other configs would cost a request each).
Any other Python file at the folder's top level is named (loading runs none of it, but
what a user is told to run, such as DeepSpeed's ``zero_to_fp32.py``, is code too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.findings import NEEDS_TRUST, Finding
from ckpt_inspector.core.io import paths
from ckpt_inspector.core.io.opening import is_url
from ckpt_inspector.core.tree import Checkpoint

CONFIGS = ("config.json", "tokenizer_config.json", "preprocessor_config.json",
           "processor_config.json", "image_processor_config.json",
           "feature_extractor_config.json", "video_preprocessor_config.json")
MAX_MODULES = 50


def _targets(auto_map: Any) -> list[str]:
    """The ``module.Class`` strings of an auto_map (values may be lists: slow and fast
    tokenizers)."""
    out: list[str] = []
    if not isinstance(auto_map, dict):
        return out
    for value in auto_map.values():
        for one in (value if isinstance(value, list) else [value]):
            if isinstance(one, str) and "." in one:
                out.append(one)
    return out


def check(ckpt: Checkpoint, folder: str, read_json: Callable[[str, str], Any]) -> None:
    """Findings for the code the folder's configs import, and its own Python files."""
    modules: dict[str, str] = {}
    for name in CONFIGS:
        if name == "config.json":
            config = ckpt.metadata.get("config")
        elif is_url(folder):
            continue  # a request per config that may not be there: config.json's only
        else:
            path = paths.join(folder, name)
            try:
                config = read_json(path, name) if paths.isfile(path) else None
            except (CheckpointError, OSError):
                continue
        if not isinstance(config, dict):
            continue
        for target in _targets(config.get("auto_map")):
            modules.setdefault(target.rpartition(".")[0], name)
    for module, where in list(modules.items())[:MAX_MODULES]:
        repo, sep, local = module.rpartition("--")
        source = (f"{local}.py from the Hub repository {repo}" if sep else f"{module}.py")
        present = "" if sep or paths.isfile(paths.join(folder, f"{module}.py")) else \
            " (not in the folder: it would be fetched from the model's repository)"
        ckpt.findings.append(Finding(
            NEEDS_TRUST, "remote-code",
            f"{where}'s auto_map makes from_pretrained(trust_remote_code=True) import "
            f"{source}{present}: that runs its code", file=where))
    loose_code(ckpt, folder, {f"{m}.py" for m in modules})


ADVICE = {"zero_to_fp32.py": "DeepSpeed's installed copy (python -m "
                             "deepspeed.utils.zero_to_fp32) does the same without it"}


def loose_code(ckpt: Checkpoint, folder: str, skip: set[str] = frozenset()) -> None:
    """An info finding for each Python file at the folder's top level (a local folder)."""
    if is_url(folder):
        return
    try:
        names = paths.listdir(folder)
    except OSError:
        return
    for name in sorted(n for n in names if n.endswith(".py") and n not in skip)[:MAX_MODULES]:
        advice = ADVICE.get(name, "read it first")
        ckpt.findings.append(Finding(
            "info", "code-file",
            f"the folder holds Python code, {name}: loading the weights runs none of it, "
            f"but running it runs its code; {advice}", file=name))
