"""Python code a Hugging Face folder asks its loaders to import: ``auto_map``.

``config.json`` (and the tokenizer's, processor's and image processor's configs) may map
an Auto class to ``module.Class``: ``from_pretrained(folder, trust_remote_code=True)``
then imports ``module.py`` from the folder (or, written ``repo--module.Class``, from
another repository on the Hub) and runs its code. So do ``custom_pipelines`` (a
pipeline's ``impl``) and ``custom_generate/generate.py``. No weights file is involved, so
nothing else in the verdict would say so: each such module is a needs-trust finding. At a
URL the other configs are read where the folder's listing (asked already) shows them, a
small request each; over plain HTTP, which lists nothing, config.json's only.
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
CUSTOM_GENERATE = "custom_generate/generate.py"


def _targets(auto_map: Any) -> list[str]:
    """The ``module.Class`` strings of an auto_map: a dict whose values may be lists (slow
    and fast tokenizers), or the legacy list of a tokenizer's config."""
    out: list[str] = []
    values = auto_map.values() if isinstance(auto_map, dict) else \
        [auto_map] if isinstance(auto_map, list) else []
    for value in values:
        for one in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(one, str) and "." in one:
                out.append(one)
    return out


def _pipelines(custom: Any) -> list[str]:
    """The ``impl`` modules of config.json's ``custom_pipelines`` (pipeline(...,
    trust_remote_code=True) imports them)."""
    if not isinstance(custom, dict):
        return []
    return [task["impl"] for task in custom.values() if isinstance(task, dict)
            and isinstance(task.get("impl"), str) and "." in task["impl"]]


def check(ckpt: Checkpoint, folder: str, read_json: Callable[[str, str], Any]) -> None:
    """Findings for the code the folder's configs import, and its own Python files."""
    modules: dict[str, tuple[str, str, str]] = {}  # module -> (config, key, loader)
    listed = _listed(folder)
    for name in CONFIGS:
        if name == "config.json":
            config = ckpt.metadata.get("config")
        elif listed is not None and name not in listed:
            continue  # not there (at a URL without a listing: config.json's only)
        else:
            path = paths.join(folder, name)
            try:
                config = read_json(path, name) if paths.isfile(path) else None
            except (CheckpointError, OSError):
                continue
        if not isinstance(config, dict):
            continue
        for target in _targets(config.get("auto_map")):
            modules.setdefault(target.rpartition(".")[0], (name, "auto_map",
                                                           "from_pretrained"))
        for target in _pipelines(config.get("custom_pipelines")):
            modules.setdefault(target.rpartition(".")[0], (name, "custom_pipelines",
                                                           "pipeline"))
    for module, (where, key, loader) in list(modules.items())[:MAX_MODULES]:
        repo, sep, local = module.rpartition("--")
        source = (f"{local}.py from the Hub repository {repo}" if sep else f"{module}.py")
        present = "" if sep or paths.isfile(paths.join(folder, f"{module}.py")) else \
            " (not in the folder: it would be fetched from the model's repository)"
        ckpt.findings.append(Finding(
            NEEDS_TRUST, "remote-code",
            f"{where}'s {key} makes {loader}(trust_remote_code=True) import "
            f"{source}{present}: that runs its code", file=where))
    generate = paths.join(folder, CUSTOM_GENERATE)
    if (listed is None or CUSTOM_GENERATE.partition("/")[0] in listed) and \
            _is_file(generate):
        ckpt.findings.append(Finding(
            NEEDS_TRUST, "remote-code", f"{CUSTOM_GENERATE} is imported by from_pretrained("
            "trust_remote_code=True) (transformers' custom generate): that runs its code",
            file=CUSTOM_GENERATE))
    loose_code(ckpt, folder, {f"{m}.py" for m in modules})


ADVICE = {"zero_to_fp32.py": "DeepSpeed's installed copy (python -m "
                             "deepspeed.utils.zero_to_fp32) does the same without it"}


def _is_file(path: str) -> bool:
    """Whether ``path`` is a file; one whose listing fails is taken to be there (at a URL:
    the folder's listing failed after its retries)."""
    try:
        return paths.isfile(path)
    except (CheckpointError, OSError):
        return True


def _listed(folder: str) -> set[str] | None:
    """The names at a URL folder's top level, where its listing is known (asked already:
    the layout was found from it); an empty set over plain HTTP, which lists nothing, so
    that no file is asked for on the chance it is there. None for a local folder."""
    if not is_url(folder):
        return None
    try:
        return set(paths.listdir(folder))
    except (CheckpointError, OSError):
        return set()


def loose_code(ckpt: Checkpoint, folder: str, skip: set[str] = frozenset()) -> None:
    """An info finding for each Python file at the folder's top level."""
    try:
        names = _listed(folder)
        if names is None:
            names = set(paths.listdir(folder))
    except OSError:
        return
    for name in sorted(n for n in names if n.endswith(".py") and n not in skip)[:MAX_MODULES]:
        advice = ADVICE.get(name, "read it first")
        ckpt.findings.append(Finding(
            "info", "code-file",
            f"the folder holds Python code, {name}: loading the weights runs none of it, "
            f"but running it runs its code; {advice}", file=name))
