"""From a :class:`Checkpoint` to its :class:`Adapter`: :func:`find_adapter`.

Rank comes from the tensors' shapes (A is ``[r, in, *kernel]``, B ``[out, r, 1, ...]``).
Alpha, in the order the loaders use it:

- a PEFT adapter (an ``adapter_config.json`` in the layout's metadata, or beside an
  ``adapter_model.*`` file opened on its own): ``alpha_pattern``'s first pattern that
  matches the module (PEFT's rule: ``re.match(rf"(.*\\.)?({pattern})$", name)``, the name
  without ``base_model.model.``), else ``lora_alpha``; the scale is alpha/r, or alpha/√r
  with ``use_rslora``; ``rank_pattern`` and ``r`` are checked against the shapes;
- a LoRA file: the module's ``alpha`` tensor (kohya saves one per module), else the file's
  safetensors metadata (kohya's ``ss_network_alpha``, or ``conv_alpha`` of
  ``ss_network_args`` for a convolution with a kernel; kohya writes every value as a
  string), else alpha = rank (scale 1), as kohya and diffusers take it.

The only data read is the alpha tensors' (one number each) and the config file.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections import Counter
from typing import Any

from ckpt_inspector.core.adapters.model import AdaptedModule, Adapter
from ckpt_inspector.core.adapters.pairs import Pair, find_pairs, parse
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.tree import Checkpoint, TensorInfo, key_of

CONFIG = "adapter_config.json"
CONFIG_METADATA = "adapter_config"  # where the peft-adapter layout puts it
PEFT_PREFIX = "base_model.model."
MAX_CONFIG = 10_000_000
# the configuration values that matter for reading the pairs, in this order
PEFT_KEYS = ("peft_type", "base_model_name_or_path", "task_type", "r", "lora_alpha",
             "use_rslora", "use_dora", "fan_in_fan_out", "target_modules", "rank_pattern",
             "alpha_pattern", "modules_to_save", "bias", "peft_version")
KOHYA_KEYS = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
              "ss_sd_model_name", "ss_base_model_version", "modelspec.architecture")


def find_adapter(ckpt: Checkpoint) -> Adapter | None:
    """The LoRA pairs of ``ckpt`` with their rank, alpha and scale, or None when it has
    none. Never raises for what the file holds: what cannot be read becomes a note."""
    from ckpt_inspector.core.summary import tensor_paths  # the fast walk

    if not _mentions_lora(ckpt.root):  # 10 ms for 100,000 tensors: most files stop here
        return None
    tensors: dict[str, TensorInfo] = {}
    for path, node in tensor_paths(ckpt):
        if node.tensor is not None:
            tensors[path[0] if len(path) == 1 and type(path[0]) is str
                    else key_of(path)] = node.tensor
    pairs, lone = find_pairs(list(tensors))
    if not pairs:
        return None
    notes: list[str] = []
    config, config_file = _peft_config(ckpt, notes)
    meta = ckpt.metadata.get("__metadata__")
    meta = meta if isinstance(meta, dict) else {}
    alpha_of = _peft_alpha(config, notes) if config is not None else _lora_alpha(meta, notes)
    modules = [_module(p, tensors, alpha_of, config) for p in pairs]
    used = {k for m in modules for k in m.keys}
    namings = Counter(p.naming for p in pairs)
    adapter = Adapter(
        kind="peft" if config is not None else "lora",
        naming=namings.most_common(1)[0][0],
        modules=modules,
        base_model=_base_model(config, meta),
        config_file=config_file,
        config=_config_summary(config, meta),
        other_tensors=[k for k in tensors if k not in used and parse(k) is None],
        unpaired=lone,
        notes=notes,
    )
    _check(adapter, config)
    return adapter


def _mentions_lora(root: Any) -> bool:
    """Whether any key in the tree has ``lora`` in it (a LoRA pair's keys all do)."""
    stack = [root]
    while stack:
        for child in stack.pop().children:
            key = child.key
            if type(key) is str and "lora" in key:
                return True
            if child.children:
                stack.append(child)
    return False


# -- the pieces of one module ----------------------------------------------------------------
def _module(pair: Pair, tensors: dict[str, TensorInfo], alpha_of: Any,
            config: dict[str, Any] | None) -> AdaptedModule:
    a, b = tensors[pair.a], tensors[pair.b]
    fan_in_fan_out = bool(config and config.get("fan_in_fan_out"))
    kind, rank, shape, transposed, problem = _shapes(pair, a, b, fan_in_fan_out)
    if "lora_mid" in pair.extras and problem is None:
        problem = ("a Tucker decomposition (lora_mid): its update is up × mid × down, not "
                   "computed here")
        shape = None
    module = AdaptedModule(pair.module, pair.naming, pair.a, pair.b, a, b, kind, rank,
                           float(rank), "rank", 1.0, shape, transposed, dict(pair.extras),
                           problem)
    module.alpha, module.alpha_from, rslora = alpha_of(module, tensors)
    if rank > 0:
        module.scale = module.alpha / (math.sqrt(rank) if rslora else rank)
    else:
        module.scale = math.nan
    if "dora_scale" in pair.extras or "lora_magnitude_vector" in pair.extras or \
            (config and config.get("use_dora")):
        module.notes.append("DoRA: the layer's weight is also renormalised by a magnitude "
                            "vector; scale·B@A is the update before that")
    return module


def _shapes(pair: Pair, a: TensorInfo, b: TensorInfo, fan_in_fan_out: bool
            ) -> tuple[str, int, tuple[int, ...] | None, bool, str | None]:
    """(kind, rank, the update's shape, whether it is B@A transposed, problem)."""
    sa, sb = tuple(a.shape), tuple(b.shape)
    rank = sa[0] if sa else 0
    unreadable = a.problem or b.problem
    if unreadable:
        return "linear", rank, None, False, f"a tensor of the pair cannot be read: {unreadable}"
    if pair.embedding:
        if len(sa) != 2 or len(sb) != 2 or sb[1] != sa[0]:
            return "embedding", rank, None, True, _mismatch(sa, sb)
        return "embedding", rank, (sa[1], sb[0]), True, None
    kind = "linear" if len(sa) == 2 else "conv"
    if len(sa) < 2 or len(sb) < 2 or sb[1] != rank or any(d != 1 for d in sb[2:]) \
            or (len(sb) > 2 and len(sb) != len(sa)):
        return kind, rank, None, False, _mismatch(sa, sb)
    if kind == "linear" and fan_in_fan_out:  # the base layer's weight is [in, out]
        return kind, rank, (sa[1], sb[0]), True, None
    return kind, rank, (sb[0], *sa[1:]), False, None


def _mismatch(sa: tuple[int, ...], sb: tuple[int, ...]) -> str:
    return (f"the shapes do not make a pair: A {list(sa)}, B {list(sb)} (A must be "
            "[r, in, ...] and B [out, r, 1, ...])")


# -- PEFT: adapter_config.json ---------------------------------------------------------------
def _peft_config(ckpt: Checkpoint, notes: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    """The adapter's configuration: what the layout read, or the file beside an
    ``adapter_model.*`` opened on its own."""
    config = ckpt.metadata.get(CONFIG_METADATA)
    if isinstance(config, dict):
        return config, CONFIG
    from ckpt_inspector.core.io import paths
    from ckpt_inspector.core.io.opening import is_url

    if ckpt.files or not paths.basename(ckpt.path).startswith("adapter_model"):
        return None, None
    beside = paths.join(paths.dirname(ckpt.path), CONFIG)
    try:
        if not paths.isfile(beside):
            return None, None
        config = json.loads(paths.read_bytes(beside, MAX_CONFIG).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, CheckpointError) as err:
        if not (is_url(beside) and "(404)" in str(err)):  # over HTTP nothing lists a folder
            notes.append(f"{CONFIG} beside the file cannot be read: {err}")
        return None, None
    if not isinstance(config, dict):
        notes.append(f"{CONFIG} beside the file is not a JSON object")
        return None, None
    return config, beside


# The config comes from the file: a pattern that repeats a group (``(a|aa)+``), or holds
# many unbounded repetitions, can take exponential or high-polynomial time on a name that
# almost matches. Such patterns (never seen in real configs) are skipped with a note.
QUANTIFIED_GROUP = re.compile(r"\)\s*(?:[*+]|\{)")
UNBOUNDED = re.compile(r"(?<!\\)(?:[*+]|\{\d*,\})")
MAX_PATTERN = 500
MAX_NAME = 300  # module names matched against a regular expression


def _risky(pattern: str) -> bool:
    return len(pattern) > MAX_PATTERN or bool(QUANTIFIED_GROUP.search(pattern)) or \
        len(UNBOUNDED.findall(pattern)) > 2


def _note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


def _pattern(patterns: Any, name: str, notes: list[str]) -> str | None:
    """PEFT's ``get_pattern_key``: the first pattern ``p`` with
    ``re.match(rf"(.*\\.)?({p})$", name)``, or None. Matched as what that means: ``p``
    matches all of ``name`` or all of what follows one of its dots (a plain name is
    compared as text). A pattern that could take exponential time is skipped."""
    if not isinstance(patterns, dict):
        return None
    starts: list[int] | None = None
    for pattern in map(str, patterns):
        if re.escape(pattern) == pattern:  # a plain name (no dot: "." matches any character)
            if name == pattern or name.endswith("." + pattern):
                return pattern
            continue
        if _risky(pattern):
            _note(notes, f"the pattern {pattern[:80]!r} is not used: it repeats a group or "
                  "holds many repetitions, which can take exponential time to match")
            continue
        if len(name) > MAX_NAME:
            _note(notes, f"module names longer than {MAX_NAME} characters are not matched "
                  "against regular expressions")
            continue
        try:
            compiled = re.compile(pattern)
        except re.error as err:
            _note(notes, f"the pattern {pattern[:80]!r} is not a regular expression: {err}")
            continue
        if starts is None:
            starts = [0, *(i + 1 for i, c in enumerate(name) if c == ".")]
        if any(compiled.fullmatch(name, start) for start in starts):
            return pattern
    return None


def _peft_name(module: str) -> str:
    return module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module


def _peft_alpha(config: dict[str, Any], notes: list[str]) -> Any:
    rslora = bool(config.get("use_rslora"))
    r_default = _as_float(config.get("r"), 8.0)
    alpha_default = _as_float(config.get("lora_alpha"), 8.0)
    peft_type = config.get("peft_type")
    if peft_type not in (None, "LORA"):
        notes.append(f"peft_type is {peft_type}, not LORA: rank and alpha are shown as read; "
                     "the update scale·B@A may not be what it applies")

    def alpha_of(m: AdaptedModule, _tensors: dict[str, TensorInfo]) -> tuple[float, str, bool]:
        name = _peft_name(m.name)
        r_key = _pattern(config.get("rank_pattern"), name, notes)
        r = _as_float(config["rank_pattern"][r_key], r_default) if r_key else r_default
        if r != m.rank:
            where = f"rank_pattern {r_key!r}" if r_key else "r"
            m.notes.append(f"the config's {where} says {r:g}, the tensors have rank {m.rank}: "
                           "PEFT would refuse to load them")
        a_key = _pattern(config.get("alpha_pattern"), name, notes)
        if a_key:
            return (_as_float(config["alpha_pattern"][a_key], alpha_default),
                    f"alpha_pattern {a_key!r}", rslora)
        return alpha_default, "lora_alpha", rslora

    return alpha_of


def _as_float(value: Any, default: float) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


# -- LoRA files: alpha tensors, kohya's metadata ---------------------------------------------
def _lora_alpha(meta: dict[str, Any], notes: list[str]) -> Any:
    network_alpha = _metadata_number(meta.get("ss_network_alpha"))
    args = meta.get("ss_network_args")
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            args = None
    conv_alpha = _metadata_number(args.get("conv_alpha")) if isinstance(args, dict) else None

    def alpha_of(m: AdaptedModule, tensors: dict[str, TensorInfo]) -> tuple[float, str, bool]:
        key = m.extras.get("alpha")
        if key is not None and _remote(tensors[key]):
            note = ("alpha tensors are not fetched from a remote file (a request each): "
                    "alpha from the metadata, or the rank")
            if note not in notes:
                notes.append(note)
        elif key is not None:
            try:
                return _scalar(tensors[key]), "tensor", False
            except (CheckpointError, OSError, ValueError) as err:
                m.notes.append(f"its alpha tensor cannot be read: {err}")
        kernel = m.a.shape[2:] if m.kind == "conv" else ()
        if conv_alpha is not None and any(k != 1 for k in kernel):
            return conv_alpha, "ss_network_args conv_alpha", False
        if network_alpha is not None:
            return network_alpha, "ss_network_alpha", False
        return float(m.rank), "rank (no alpha given)", False

    return alpha_of


def _metadata_number(value: Any) -> float | None:
    """A number from kohya's metadata, where every value is a string (``"8.0"``,
    ``"None"``)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _remote(info: TensorInfo) -> bool:
    source = info.storage.source if info.storage is not None else None
    return source is not None and source.remote


STRUCT = {"float16": "e", "float32": "f", "float64": "d", "int64": "q", "int32": "i"}


def _scalar(info: TensorInfo) -> float:
    """The one value of an alpha tensor: read with :mod:`struct` for the usual dtypes (no
    numpy for ``info``), else as statistics read values."""
    if info.numel != 1:
        raise ValueError(f"it holds {info.numel:,} values, not one")
    source = info.storage.source if info.storage is not None else None
    code = STRUCT.get(info.dtype) or ("H" if info.dtype == "bfloat16" else None)
    if source is not None and code is not None and not info.problem:
        size = struct.calcsize(code)
        raw = source.read(info.storage_offset * size, size)
        if len(raw) != size:
            raise ValueError("its data runs past the end of the file")
        order = ">" if source.byteorder == "big" else "<"
        value = struct.unpack(order + code, raw)[0]
        if info.dtype == "bfloat16":  # the high half of a float32
            value = struct.unpack("<f", struct.pack("<I", value << 16))[0]
        return float(value)
    from ckpt_inspector.core.ops.passes import element_chunks

    for values, _index in element_chunks(info):
        return float(values[0])
    raise ValueError("it holds no value")


# -- the rest --------------------------------------------------------------------------------
def _base_model(config: dict[str, Any] | None, meta: dict[str, Any]) -> str | None:
    if config is not None:
        base = config.get("base_model_name_or_path")
        return str(base) if base else None
    for key in ("ss_sd_model_name", "modelspec.architecture", "ss_base_model_version"):
        if meta.get(key):
            return str(meta[key])
    return None


def _config_summary(config: dict[str, Any] | None, meta: dict[str, Any]) -> dict[str, Any]:
    source, keys = (config, PEFT_KEYS) if config is not None else (meta, KOHYA_KEYS)
    return {k: source[k] for k in keys if k in source}


def _check(adapter: Adapter, config: dict[str, Any] | None) -> None:
    """Notes on what does not add up between the configuration and the tensors."""
    if adapter.kind == "lora" and adapter.naming == "peft" and \
            not any("alpha" in m.extras for m in adapter.modules):
        adapter.notes.append(f"no {CONFIG} beside it and no alpha tensors: alpha is taken "
                             "as the rank (scale 1)")
    if config is not None and adapter.other_tensors and not config.get("modules_to_save"):
        adapter.notes.append(f"{len(adapter.other_tensors):,} tensors are not LoRA pairs, "
                             "and the config names no modules_to_save")
    if adapter.unpaired:
        adapter.notes.append(f"{len(adapter.unpaired):,} LoRA tensors have no partner, e.g. "
                             f"{adapter.unpaired[0]!r}")
