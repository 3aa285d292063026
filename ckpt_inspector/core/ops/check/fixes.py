"""The fix for a state_dict that does not load: a prefix rule (strip ``module.`` of
DataParallel, ``model.`` of Lightning, ``_orig_mod.`` of ``torch.compile``, or add one),
renames found from the keys left over (a run of key segments renamed the same way for every
key it touches, each landing on a key of the same shape), a classifier head of another size
(torchvision: build with ``num_classes``), and ``strict=False`` where only keys the model
has no place for are left. Each step is kept only if it matches more tensors; the result is
checked by loading again, never guessed. Plain Python (the target's ``load`` may use torch).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

from ckpt_inspector.core.ops.check.emulate import shapes_match
from ckpt_inspector.core.ops.check.report import Fix, Spec
from ckpt_inspector.core.ops.check.state import Item, Outcome, StateDict, Target

KNOWN_PREFIXES = ("module.", "model.", "_orig_mod.")
MAX_PREFIXES = 8
MAX_SEGMENTS = 3  # a prefix rule takes at most this many leading segments
MAX_LEFTOVER = 5000  # renames are looked for among at most this many keys on one side
MAX_PAIRS = 64  # keys of the same shape paired with each leftover key
MAX_RULES = 256  # the renames suggested by the most pairs, checked against every key


# -- prefixes --------------------------------------------------------------------------------
def prefix_candidates(keys: list[str]) -> list[str]:
    """Leading segments worth trying: the known ones present, then those most keys share."""
    counts: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")[:-1]
        for n in range(1, min(MAX_SEGMENTS, len(parts)) + 1):
            counts[".".join(parts[:n]) + "."] += 1
    out = [p for p in KNOWN_PREFIXES if counts[p]]
    out += [p for p, _n in counts.most_common() if p not in out]
    return out[:MAX_PREFIXES]


def _score(specs: dict[str, Spec], expected: dict[str, Spec], strip: str,
           add: str) -> tuple[int, int]:
    """(keys that land on a model key of their shape, keys that land on a model key)."""
    fits = names = 0
    for key, spec in specs.items():
        want = expected.get(apply_prefix(key, strip, add))
        if want is not None:
            names += 1
            fits += spec.shape is not None and want.shape is not None and shapes_match(
                spec.shape, want.shape)
    return fits, names


def best_prefix(specs: dict[str, Spec], expected: dict[str, Spec]) -> tuple[str, str]:
    """``(strip, add)``: the prefix rule under which the most tensors land on the model's
    keys with their shapes (``("", "")`` when no rule does better than none)."""
    best, best_score = ("", ""), _score(specs, expected, "", "")
    strips = ["", *prefix_candidates(list(specs))]
    adds = ["", *prefix_candidates(list(expected))]
    for strip in strips:
        for add in adds:
            if (strip, add) == ("", "") or strip == add:
                continue
            score = _score(specs, expected, strip, add)
            if score > best_score:
                best, best_score = (strip, add), score
    return best


def apply_prefix(key: str, strip: str, add: str) -> str:
    """The key under the rule: ``strip`` removed where it starts it; ``add`` put before
    every key, or, with ``strip``, in its place (a prefix replaced: only those keys)."""
    if not strip:
        return add + key
    return add + key[len(strip):] if key.startswith(strip) else key


# -- renames ---------------------------------------------------------------------------------
def _segments_pattern(old: str) -> re.Pattern[str]:
    """``old`` as whole segments of a dotted key."""
    return re.compile(r"(?<![^.])" + re.escape(old) + r"(?![^.])")


def rename(key: str, old: str, new: str) -> str:
    return _segments_pattern(old).sub(lambda _m: new, key, count=1)


def _rule(a: str, b: str) -> tuple[str, str] | None:
    """The run of segments that turns key ``a`` into ``b`` (their common start and end
    kept), or None when ``a`` has nothing to replace."""
    sa, sb = a.split("."), b.split(".")
    head = 0
    while head < min(len(sa), len(sb)) and sa[head] == sb[head]:
        head += 1
    tail = 0
    while tail < min(len(sa), len(sb)) - head and sa[-1 - tail] == sb[-1 - tail]:
        tail += 1
    old, new = sa[head:len(sa) - tail], sb[head:len(sb) - tail]
    if not old or not new:
        return None
    return ".".join(old), ".".join(new)


def infer_renames(specs: dict[str, Spec], expected: dict[str, Spec]
                  ) -> list[tuple[str, str]]:
    """Renames of the keys the model lacks onto the keys the checkpoint lacks. A rule is
    kept when every leftover key it touches lands on a leftover model key of its shape (no
    two on the same one); a rule that touches one key only when that key's shape is unique
    on both sides. Rules that touch the most keys win."""
    unexpected = [k for k in specs if k not in expected and specs[k].shape is not None]
    missing = [k for k in expected if k not in specs]
    by_shape: dict[tuple[int, ...] | None, list[str]] = defaultdict(list)
    for k in missing:
        by_shape[expected[k].shape].append(k)
    if not unexpected or not missing or min(len(unexpected), len(missing)) > MAX_LEFTOVER:
        return []  # nothing to pair, or two unrelated models: not worth the pairs
    shape_of_u: Counter[tuple[int, ...] | None] = Counter(specs[k].shape for k in unexpected)
    rules: Counter[tuple[str, str]] = Counter()
    for u in unexpected:
        for m in by_shape.get(specs[u].shape, ())[:MAX_PAIRS]:
            rule = _rule(u, m)
            if rule is not None:
                rules[rule] += 1
    missing_set = set(missing)
    valid: list[tuple[int, str, str, dict[str, str]]] = []
    for (old, new), _n in rules.most_common(MAX_RULES):
        pattern = _segments_pattern(old)
        moved: dict[str, str] = {}
        for u in unexpected:
            if pattern.search(u):
                target = pattern.sub(lambda _m, n=new: n, u, count=1)
                if target not in missing_set or not shapes_match(
                        specs[u].shape or (), expected[target].shape or ()):
                    moved = {}
                    break
                moved[u] = target
        if not moved or len(set(moved.values())) != len(moved):
            continue
        if len(moved) == 1:
            [(u, m)] = moved.items()
            if shape_of_u[specs[u].shape] != 1 or len(by_shape[expected[m].shape]) != 1:
                continue
        valid.append((len(moved), old, new, moved))
    valid.sort(key=lambda r: (-r[0], len(r[1]) + len(r[2]), r[1], r[2]))
    taken: set[str] = set()
    landed: set[str] = set()
    out = []
    for _n, old, new, moved in valid:
        if taken.isdisjoint(moved) and landed.isdisjoint(moved.values()):
            out.append((old, new))
            taken.update(moved)
            landed.update(moved.values())
    return out


# -- the head ----------------------------------------------------------------------------------
def head_size(specs: dict[str, Spec], expected: dict[str, Spec]) -> int | None:
    """When every size mismatch is in the first dimension only, the same number on the
    checkpoint's side for all (and on the model's): that number (a classifier head)."""
    found: set[tuple[int, int]] = set()
    for key, spec in specs.items():
        want = expected.get(key)
        if want is None or spec.shape is None or want.shape is None or shapes_match(
                spec.shape, want.shape):
            continue
        a, b = spec.shape, want.shape
        if not a or len(a) != len(b) or a[1:] != b[1:]:
            return None
        found.add((a[0], b[0]))
    if len(found) == 1:
        return found.pop()[0]
    return None


# -- the whole fix -------------------------------------------------------------------------------
def find_fix(sd: StateDict, target: Target, outcome: Outcome) -> Fix | None:
    """The fix for ``outcome`` (None when it loads already), checked by loading again."""
    if outcome.ok:
        return None
    specs = sd.specs()
    expected = target.expected
    strip, add = best_prefix(specs, expected)
    mapped = {apply_prefix(k, strip, add): s for k, s in specs.items()}
    renames = infer_renames(mapped, expected)
    for old, new in renames:
        mapped = {rename(k, old, new): s for k, s in mapped.items()}
    fix = Fix(strip, add, renames)
    final, classes = target, head_size(mapped, expected)
    if classes is not None:
        rebuilt = target.with_classes(classes)
        if rebuilt is not None:
            final, fix.num_classes = rebuilt, classes
        else:
            fix.notes.append(f"the classifier head has {classes:,} outputs in the checkpoint: "
                             "build the model for that many classes")
    items = [Item(_new_key(i.key, fix), i.spec, i.value) for i in sd.items]
    cast = [i for i in items if i.spec.shape is not None and i.key in final.expected
            and i.spec.dtype != final.expected[i.key].dtype]
    if cast:
        n, first = len(cast), cast[0]
        fix.notes.append(f"{n:,} tensor{'s' if n != 1 else ''} will be cast to the model's "
                         f"dtype as {'they load' if n != 1 else 'it loads'} (e.g. "
                         f"{first.key}: {first.spec.dtype} → "
                         f"{final.expected[first.key].dtype})")
    # a dict made from the keys keeps no _metadata (so BatchNorm fills num_batches_tracked)
    after = final.load(items, None if fix.changes_keys else sd.versions)
    only_unexpected = bool(after.unexpected) and not (
        after.missing or after.mismatched or after.errors)
    fix.strict = not only_unexpected
    fix.compatible = after.ok or only_unexpected
    fix.remaining = {name: keys for name, keys in (
        ("missing", after.missing), ("unexpected", after.unexpected),
        ("mismatched", after.mismatched),
        ("errors", [m for _k, m in after.errors])) if keys}
    fix.summary = _summary(fix, after)
    fix.code = _code(fix, sd.key, final) if (
        fix.changes_keys or fix.num_classes or not fix.strict) else ""
    return fix


def _new_key(key: str, fix: Fix) -> str:
    key = apply_prefix(key, fix.strip_prefix, fix.add_prefix)
    for old, new in fix.renames:
        key = rename(key, old, new)
    return key


def _summary(fix: Fix, after: Outcome) -> str:
    steps = []
    if fix.strip_prefix and fix.add_prefix:
        steps.append(f"replace {fix.strip_prefix!r} with {fix.add_prefix!r} at the start "
                     "of the keys")
    elif fix.strip_prefix:
        steps.append(f"strip {fix.strip_prefix!r} from the keys")
    elif fix.add_prefix:
        steps.append(f"add {fix.add_prefix!r} before every key")
    steps += [f"rename {old!r} to {new!r}" for old, new in fix.renames]
    if fix.num_classes is not None:
        steps.append(f"build the model with num_classes={fix.num_classes}")
    if not fix.strict:
        n = len(after.unexpected)
        steps.append(f"load with strict=False (it ignores {n:,} key{'s' if n != 1 else ''} "
                     "the model has no place for; every weight of the model is loaded)")
    if not steps:
        return "no prefix, rename or head size makes it load"
    text = "; ".join(steps)
    if fix.compatible:
        return text[0].upper() + text[1:] + ": then it loads."
    left = [f"{len(v):,} {k}" for k, v in fix.remaining.items()]
    return text[0].upper() + text[1:] + f": still fails ({', '.join(left)})."


def _py(text: str) -> str:
    return json.dumps(text)


def _code(fix: Fix, part: str, target: Target) -> str:
    lines = []
    if fix.renames:
        lines.append("import re")
    where = "".join(f"[{_py(p)}]" for p in part.split(".")) if part else ""
    lines.append(f"# sd: the checkpoint's state_dict (torch.load(...){where})")
    strip, add = _py(fix.strip_prefix), _py(fix.add_prefix)
    if fix.strip_prefix and fix.add_prefix:
        lines.append(f"sd = {{({add} + k[{len(fix.strip_prefix)}:] if k.startswith({strip}) "
                     "else k): v for k, v in sd.items()}")
    elif fix.strip_prefix:
        lines.append(f"sd = {{k.removeprefix({strip}): v for k, v in sd.items()}}")
    elif fix.add_prefix:
        lines.append(f"sd = {{{add} + k: v for k, v in sd.items()}}")
    for old, new in fix.renames:
        pattern = _segments_pattern(old).pattern
        literal = f'r"{pattern}"' if '"' not in pattern and not pattern.endswith("\\") \
            else repr(pattern)
        lines.append(f"sd = {{re.sub({literal}, {_py(new)}, k, count=1): v "
                     "for k, v in sd.items()}")
    lines += target.build_code(fix.num_classes).splitlines()
    lines.append("model.load_state_dict(sd)" if fix.strict
                 else "model.load_state_dict(sd, strict=False)")
    imports = [line for line in lines if line.startswith(("import ", "from "))]
    return "\n".join([*dict.fromkeys(imports), *(x for x in lines if x not in imports)])
