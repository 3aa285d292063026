"""The adapter section ``ckpt-inspector info`` prints: what the adapter is, then one line per
group of modules that share rank, alpha and scale (:func:`module_groups`)."""

from __future__ import annotations

from collections.abc import Iterator

from ckpt_inspector.core.adapters.model import Adapter, module_groups, short, spread

MAX_ROWS = 24  # groups printed (info --json lists every module)
KINDS = {"peft": "PEFT LoRA adapter", "lora": "LoRA file"}
NAMINGS = {"peft": "lora_A/lora_B", "kohya": "kohya lora_down/lora_up",
           "diffusers": "diffusers lora.down/lora.up"}


def counts_text(values: list[float]) -> str:
    """``16`` when every module has it, else ``8 (3), 16 (221)``."""
    counts = spread(values)["counts"]
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{v} ({n})" for v, n in counts.items())


def common_prefix(adapter: Adapter) -> str:
    """The dotted segments every module name starts with (``base_model.model.model.layers.``),
    left out of the table's rows; "" for one module, or names without dots (kohya's)."""
    names = [m.name.split(".") for m in adapter.modules]
    if len(names) < 2:
        return ""
    prefix: list[str] = []
    for parts in zip(*(n[:-1] for n in names)):  # never a whole name
        if len(set(parts)) != 1:
            break
        prefix.append(parts[0])
    return ".".join(prefix) + "." if prefix else ""


def headline(adapter: Adapter) -> str:
    """``PEFT LoRA adapter of meta-llama/Llama-2-7b-hf · 224 modules``."""
    base = f" of {adapter.base_model}" if adapter.base_model else ""
    n = len(adapter.modules)
    return f"{KINDS.get(adapter.kind, adapter.kind)}{base} · {n:,} module{'s' if n != 1 else ''}"


def scale_rule(adapter: Adapter) -> str:
    return "alpha/√r (rsLoRA)" if adapter.config.get("use_rslora") else "alpha/r"


def adapter_lines(adapter: Adapter, max_rows: int = MAX_ROWS) -> Iterator[str]:
    """The lines of the section, indented as ``info``'s header."""
    mods = adapter.modules
    yield f"  adapter  {headline(adapter)} ({NAMINGS.get(adapter.naming, adapter.naming)})"
    yield (f"           rank {counts_text([m.rank for m in mods])} · alpha "
           f"{counts_text([m.alpha for m in mods])} · scale "
           f"{counts_text([m.scale for m in mods])} = {scale_rule(adapter)}")
    targets = adapter.config.get("target_modules")
    if targets:
        text = ", ".join(map(str, targets)) if isinstance(targets, list) else str(targets)
        yield f"           target modules: {text}"
    if adapter.other_tensors:
        saved = adapter.config.get("modules_to_save")
        what = f" (modules_to_save: {', '.join(map(str, saved))})" if saved else ""
        yield f"           {len(adapter.other_tensors):,} other tensors saved whole{what}"
    prefix = common_prefix(adapter)
    groups = module_groups(mods, prefix)
    rows = [(g.first, str(list(g.first.update_shape)) if g.first.update_shape else "none",
             g.pattern + (f" ×{len(g.modules)}" if len(g.modules) > 1 else ""))
            for g in groups[:max_rows]]
    width = min(max(len("update"), *(len(r[1]) for r in rows)), 24)
    head = "module" + (f" (after {prefix})" if prefix else "")
    yield f"    {'rank':>4s}  {'alpha':>7s}  {'scale':>8s}  {'update':{width}s}  {head}"
    for m, update, label in rows:  # the numbers first: the names are long
        problem = f"  ({m.problem})" if m.problem else ""
        yield (f"    {m.rank:>4d}  {short(m.alpha):>7s}  {short(m.scale):>8s}  "
               f"{update:{width}s}  {label}{problem}")
    if len(groups) > max_rows:
        yield f"    … {len(groups) - max_rows:,} more groups (info --json lists every module)"
    for note in adapter.notes:
        yield f"  note: {note}"
