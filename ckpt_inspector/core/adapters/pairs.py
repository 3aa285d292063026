"""Which tensors of a checkpoint are the two halves of a LoRA pair, from their keys alone.

The namings met in the wild, each a marker in the dotted key between the adapted module and
what follows it:

- PEFT: ``<module>.lora_A[.<adapter>].weight`` / ``lora_B``; for an embedding
  ``<module>.lora_embedding_A[.<adapter>]`` / ``lora_embedding_B`` (parameters, no
  ``.weight``); diffusers writes the same names since it moved to PEFT.
- kohya / sd-scripts (and LyCORIS' LoCon): ``lora_unet_<path_with_underscores>.lora_down.weight``
  / ``lora_up.weight``, the alpha as a scalar tensor ``<module>.alpha``; LoCon's Tucker
  form adds ``<module>.lora_mid.weight``; a DoRA file ``<module>.dora_scale``.
- diffusers before PEFT: ``<module>.lora.down.weight`` / ``lora.up.weight``,
  ``<module>.lora_linear_layer.down.weight`` / ``up``, and the attention processors'
  ``<module>_lora.down.weight`` (``to_q_lora``: the module is ``to_q``).

A's first dimension and B's second are the rank; the rest is checked by
:mod:`~ckpt_inspector.core.adapters.build`. Nothing here reads a tensor's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# one-segment markers -> (side, naming); side A is lora_A / lora_down, B lora_B / lora_up
ONE = {"lora_A": ("A", "peft"), "lora_B": ("B", "peft"),
       "lora_embedding_A": ("A", "peft"), "lora_embedding_B": ("B", "peft"),
       "lora_down": ("A", "kohya"), "lora_up": ("B", "kohya")}
# two-segment markers: "lora" or "lora_linear_layer" followed by "down" / "up"
TWO = {"lora": "diffusers", "lora_linear_layer": "diffusers"}
SIDE_OF = {"down": "A", "up": "B"}
EMBEDDING = ("lora_embedding_A", "lora_embedding_B")
EXTRAS = ("alpha", "lora_mid", "dora_scale", "lora_magnitude_vector")  # beside a pair


@dataclass(frozen=True)
class Half:
    """What a key says: ``module`` adapted, ``side`` (A or B), how it is named, and the
    text that identifies its partner (the key with its marker as the other side)."""

    module: str
    side: str
    naming: str
    partner_key: str
    embedding: bool = False


def _partner(segments: list[str], at: int, width: int, new: list[str]) -> str:
    return ".".join(segments[:at] + new + segments[at + width:])


def _tail_ok(rest: list[str], embedding: bool) -> bool:
    """What may follow a marker: ``weight``, an adapter name and ``weight``; for an
    embedding's parameters nothing, or an adapter name."""
    if embedding:
        return len(rest) <= 1 and rest != ["weight"]
    return rest == ["weight"] or (len(rest) == 2 and rest[1] == "weight")


def parse(key: str) -> Half | None:
    """The LoRA half a dotted key names, or None. The marker nearest the end counts."""
    if "lora" not in key:
        return None
    segments = key.split(".")
    for i in range(len(segments) - 1, 0, -1):
        seg = segments[i]
        if seg in ONE:
            side, naming = ONE[seg]
            emb = seg in EMBEDDING
            if not _tail_ok(segments[i + 1:], emb):
                continue
            other = seg[:-1] + ("B" if side == "A" else "A") if naming == "peft" else \
                ("lora_up" if side == "A" else "lora_down")
            return Half(".".join(segments[:i]), side, naming,
                        _partner(segments, i, 1, [other]), emb)
        if seg in SIDE_OF and i >= 2 and segments[i + 1:] == ["weight"]:
            prev = segments[i - 1]
            other = "up" if seg == "down" else "down"
            if prev in TWO:
                return Half(".".join(segments[:i - 1]), SIDE_OF[seg], TWO[prev],
                            _partner(segments, i, 1, [other]))
            if prev.endswith("_lora") and len(prev) > 5:
                module = ".".join([*segments[:i - 1], prev[:-5]])
                return Half(module, SIDE_OF[seg], "diffusers",
                            _partner(segments, i, 1, [other]))
    return None


@dataclass
class Pair:
    """Two keys of one adapted module (``a``: lora_A / lora_down; ``b``: lora_B /
    lora_up), and the keys beside them (``alpha``, ``lora_mid``, ``dora_scale``)."""

    module: str
    naming: str
    a: str
    b: str
    embedding: bool = False
    extras: dict[str, str] = field(default_factory=dict)


def find_pairs(keys: list[str]) -> tuple[list[Pair], list[str]]:
    """The pairs among ``keys`` (in the order their A key comes), and the LoRA halves whose
    partner is missing."""
    present = set(keys)
    halves = {k: h for k in keys if (h := parse(k)) is not None}
    pairs: list[Pair] = []
    lone: list[str] = []
    for key, half in halves.items():
        partner = half.partner_key
        if partner not in present or partner not in halves:
            lone.append(key)
            continue
        if half.side != "A":
            continue  # the pair is made once, from its A
        pair = Pair(half.module, half.naming, key, partner, half.embedding)
        for extra in EXTRAS:
            for candidate in (f"{half.module}.{extra}", f"{half.module}.{extra}.weight"):
                if candidate in present:
                    pair.extras[extra] = candidate
                    break
        pairs.append(pair)
    return pairs, lone
