"""A corpus of hostile and benign checkpoint files, generated on the spot.

Every malicious sample carries a payload that creates ``marker`` when a real
unpickler (``pickle.load``, ``torch.load(weights_only=False)``) runs it;
``live`` samples are bare pickles that the tests unpickle in a child process
to prove the payload is real. Used by the security tests and by
``benchmarks/bench_scanners.py`` (which runs other scanners on the same files).

    python tests/corpus.py OUT_DIR     # write the corpus and print its index
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Sample:
    name: str
    path: Path
    malicious: bool
    expect: str  # dangerous | needs-trust | safe | refused (unreadable, with a reason)
    finding: str | None  # a finding code the scan must report
    about: str
    live: bool = False  # a bare pickle whose payload a child process can prove


class Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func: Callable, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


# -- hand-written pickle pieces -----------------------------------------------------------
def _str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _global(module: str, name: str) -> bytes:
    return _str(module) + _str(name) + b"\x93"


def call_pickle(module: str, name: str, *args: str) -> bytes:
    """``module.name(*args)`` with string arguments, protocol 4."""
    body = _global(module, name) + b"(" + b"".join(_str(a) for a in args) + b"tR"
    return b"\x80\x04" + body + b"."


def rot13(s: str) -> str:
    return s.translate(str.maketrans("abcdefghijklmnopqrstuvwxyz",
                                     "nopqrstuvwxyzabcdefghijklm"))


def computed_import(command: str) -> bytes:
    """``STACK_GLOBAL`` whose names come from ``_codecs.decode(..., 'rot13')``."""
    def hidden(s: str) -> bytes:
        return _global("_codecs", "decode") + _str(rot13(s)) + _str("rot13") + b"\x86R"
    return b"\x80\x04" + hidden("os") + hidden("system") + b"\x93" + _str(command) + b"\x85R."


def encoded_import(command: str) -> bytes:
    """Names as bytes turned to str by ``builtins.str(b, 'latin1')``."""
    def hidden(s: str) -> bytes:
        return (_global("builtins", "str") + b"C" + bytes([len(s)]) + s.encode()
                + _str("latin1") + b"\x86R")
    return b"\x80\x04" + hidden("os") + hidden("system") + b"\x93" + _str(command) + b"\x85R."


def memo_import(command: str) -> bytes:
    """'os' and 'system' memoized first and fetched back for STACK_GLOBAL."""
    return (b"\x80\x04" + _str("os") + b"\x94" + _str("system") + b"\x94" + b"0" + b"0"
            + b"h\x00h\x01\x93" + _str(command) + b"\x85R.")


def dotted_walk(command: str) -> bytes:
    """``argparse`` + ``_os.system``: an attribute walk from a harmless module to os."""
    return b"\x80\x04" + _global("argparse", "_os.system") + _str(command) + b"\x85R."


def build_on_global() -> bytes:
    """BUILD on ``collections.OrderedDict``: sets attributes on an imported class."""
    return b"\x80\x04" + _global("collections", "OrderedDict") + b"}" + _str("x") + b"K\x01sb."


def lying_frame(command: str) -> bytes:
    """A FRAME that claims 4 bytes but holds the whole payload."""
    inner = call_pickle("os", "system", command)[2:]
    return b"\x80\x04\x95" + struct.pack("<Q", 4) + inner


def extension_code() -> bytes:
    return b"\x80\x02\x82\x01)R."


# -- torch-based samples --------------------------------------------------------------------
def _zip_bytes(torch, obj, **kw) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def rewrite_zip(src: bytes, edit: Callable[[zipfile.ZipInfo, bytes], list[tuple]]) -> bytes:
    """Copy a zip, letting ``edit`` return the (ZipInfo|name, data) records for each member."""
    import warnings

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(out, "w") as zout, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": on purpose
        for info in zin.infolist():
            for target, data in edit(info, zin.read(info)):
                zout.writestr(target, data)
    return out.getvalue()


def patch_local_name(data: bytes, old: str, new: str) -> bytes:
    """Change a member's name in its local header only (same length)."""
    assert len(old) == len(new)
    pos = 0
    while True:
        pos = data.index(b"PK\x03\x04", pos)
        n = struct.unpack_from("<H", data, pos + 26)[0]
        name = data[pos + 30:pos + 30 + n]
        if name == old.encode():
            return data[:pos + 30] + new.encode() + data[pos + 30 + n:]
        pos += 4


def set_flag_bits(data: bytes, member: str, bits: int) -> bytes:
    """Set general-purpose flag bits of a member in both headers (1 = encrypted)."""
    buf = bytearray(data)
    for sig, name_at, flag_at in ((b"PK\x03\x04", 30, 6), (b"PK\x01\x02", 46, 8)):
        pos = 0
        while (pos := buf.find(sig, pos)) >= 0:
            n = struct.unpack_from("<H", buf, pos + (26 if sig == b"PK\x03\x04" else 28))[0]
            if bytes(buf[pos + name_at:pos + name_at + n]) == member.encode():
                flags = struct.unpack_from("<H", buf, pos + flag_at)[0]
                struct.pack_into("<H", buf, pos + flag_at, flags | bits)
            pos += 4
    return bytes(buf)


def tar_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def build(out: Path, marker: Path) -> list[Sample]:
    """Write the corpus into ``out``; payloads create ``marker`` if they ever run."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    touch = f"touch {marker}"
    samples: list[Sample] = []

    def add(name: str, data: bytes, expect: str, finding: str | None, about: str,
            live: bool = False) -> None:
        path = out / name
        path.write_bytes(data)
        samples.append(Sample(name, path, not name.startswith("benign_"), expect, finding,
                              about, live))

    # bare pickles: each runs its payload on pickle.load ---------------------------------
    import builtins
    import subprocess

    live = [
        ("os_system_p0.pkl", pickle.dumps(Reduce(os.system, touch), protocol=0),
         "os.system, protocol 0 (GLOBAL/REDUCE as text)"),
        ("os_system_p2.pkl", pickle.dumps(Reduce(os.system, touch), protocol=2),
         "os.system, protocol 2"),
        ("os_system_p4.pkl", pickle.dumps({"a": [Reduce(os.system, touch)]}, protocol=4),
         "os.system nested in a dict, protocol 4 (STACK_GLOBAL, FRAME)"),
        ("os_system_p5.pkl", pickle.dumps(Reduce(os.system, touch), protocol=5),
         "os.system, protocol 5"),
        ("subprocess_call.pkl", pickle.dumps(Reduce(subprocess.call, ["touch", str(marker)])),
         "subprocess.call with an argument list"),
        ("builtins_exec.pkl", pickle.dumps(Reduce(builtins.exec,
                                                  f"open({str(marker)!r}, 'w').close()")),
         "builtins.exec of Python source"),
        ("builtins_eval.pkl", pickle.dumps(Reduce(builtins.eval,
                                                  f"__import__('os').system({touch!r})")),
         "builtins.eval calling __import__"),
        ("builtins_open.pkl", pickle.dumps(Reduce(builtins.open, str(marker), "w")),
         "builtins.open creating a file"),
        ("runpy_run_code.pkl",
         b"\x80\x04" + _global("runpy", "_run_code") + b"("
         + _str(f"open({str(marker)!r}, 'w').close()") + b"}tR.",
         "runpy._run_code (fickling's list)"),
        ("computed_rot13.pkl", computed_import(touch),
         "import names computed by _codecs.decode(..., 'rot13'): 'os' never appears"),
        ("computed_str.pkl", encoded_import(touch),
         "import names computed by builtins.str(bytes, 'latin1')"),
        ("memo_names.pkl", memo_import(touch),
         "STACK_GLOBAL names fetched from the memo"),
        ("dotted_walk.pkl", dotted_walk(touch),
         "argparse + '_os.system': an attribute walk to os from a harmless module"),
        ("trailing_second_pickle.pkl",
         pickle.dumps({"ok": 1}) + pickle.dumps(Reduce(os.system, touch)),
         "a clean pickle followed by a payload pickle (a second pickle.load runs it)"),
        ("truncated_after_payload.pkl",
         pickle.dumps([Reduce(os.system, touch)], protocol=2)[:-3],
         "the payload, then a stream that breaks (stops scanners that bail on errors)"),
        ("lying_frame.pkl", lying_frame(touch), "a FRAME length that lies about its content"),
    ]
    for name, data, about in live:
        finding = {"computed_rot13.pkl": "dynamic-import", "computed_str.pkl": "dynamic-import",
                   "trailing_second_pickle.pkl": "trailing-data",
                   "truncated_after_payload.pkl": "dangerous-import",
                   "lying_frame.pkl": "frame-mismatch"}.get(name, "dangerous-import")
        add(name, data, "dangerous", finding, about,
            live=name not in ("trailing_second_pickle.pkl", "truncated_after_payload.pkl"))
    # compressed whole: joblib.load (by the first bytes), pandas.read_pickle (by name) and
    # pickle.load(gzip.open(...)) unpack and run them
    import bz2
    import gzip
    import lzma
    import zlib

    evil = pickle.dumps({"a": Reduce(os.system, touch)}, protocol=4)
    for suffix, pack in (("gz", gzip.compress), ("bz2", bz2.compress), ("xz", lzma.compress),
                         ("z", zlib.compress),
                         ("lzma", lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE))):
        add(f"compressed_pickle.pkl.{suffix}", pack(evil), "dangerous", "dangerous-import",
            f"a pickle compressed whole ({suffix}), as joblib.load and pandas unpack it")
    # joblib: the payload after an array's raw bytes (pickle.load breaks before it, joblib
    # reads on), and in an object array's pickle, plain and zlib-compressed
    import joblib
    import numpy as np

    for name, obj in (("after_array", {"w": np.ones(4, dtype=np.float32),
                                       "z": Reduce(os.system, touch)}),
                      ("object_array", {"w": np.array([Reduce(os.system, touch)],
                                                      dtype=object)})):
        for compress in (0, 3):
            buf = io.BytesIO()
            joblib.dump(obj, buf, compress=compress)
            add(f"joblib_{name}{'_zlib' if compress else ''}.joblib", buf.getvalue(),
                "dangerous", "dangerous-import",
                f"joblib.dump{' compressed' if compress else ''}: payload {name.replace('_', ' ')}")
    add("build_on_global.pkl", build_on_global(), "dangerous", "build-on-global",
        "BUILD sets attributes on an imported class")
    add("extension_code.pkl", extension_code(), "dangerous", "extension-import",
        "EXT1: an import by copyreg extension code, no name in the file")

    # callables nobody lists: each runs its payload under torch.load (proven in
    # tests/core/test_verdict_calls.py); the verdict comes from what is called
    import hostile_calls

    for name, builder, _shown in hostile_calls.HOSTILE:
        add(f"calls_{name}", builder(marker), "dangerous", None,
            builder.__doc__.strip().split("\n")[0] if builder.__doc__ else name)

    # zips read as torch's miniz reads them, bare-pickle and .pt2 loader paths (builders
    # in hostile_zip.py, proven live in tests/core/test_zip_like_torch.py and
    # test_pt2_security.py)
    import hostile_zip

    for name, builder, expect, finding, about in hostile_zip.SAMPLES:
        if expect == "dangerous":
            add(name, builder(torch, marker), expect, finding, about)

    # tar links and V7 headers, odd first opcodes, computed legacy headers (builders in
    # hostile_files.py, proven live in tests/core/test_bounds_and_tar.py)
    import hostile_files

    for name, builder, expect, finding, about in hostile_files.SAMPLES:
        if expect == "dangerous":
            add(name, builder(torch, marker), expect, finding, about)

    # torch files ---------------------------------------------------------------------------
    weights = {"w": torch.ones(2)}
    evil = {**weights, "hook": Reduce(os.system, touch)}
    zip_evil = _zip_bytes(torch, evil)
    add("zip_payload.pt", zip_evil, "dangerous", "dangerous-import",
        "torch.save of a dict holding a __reduce__ payload")
    add("legacy_payload.pt", _zip_bytes(torch, evil, _use_new_zipfile_serialization=False),
        "dangerous", "dangerous-import", "the same in the legacy (non-zip) format")
    add("zip_payload.bin", zip_evil, "dangerous", "dangerous-import",
        "a torch zip named .bin (scanners that pick readers by extension)")
    add("zip_payload.weights", zip_evil, "dangerous", "dangerous-import",
        "a torch zip with an unknown extension")
    benign_zip = _zip_bytes(torch, weights)
    evil_pickle = pickle.dumps(Reduce(os.system, touch), protocol=2)
    root = "archive/"  # torch.save to a buffer names the root folder "archive"
    add("zip_extra_pickle.pt",
        rewrite_zip(benign_zip, lambda i, d: [(i, d)] + (
            [(f"{root}extra.pkl", evil_pickle)] if i.filename.endswith("data.pkl") else [])),
        "dangerous", "dangerous-import", "a second .pkl member beside data.pkl")
    add("zip_hidden_member.pt",
        rewrite_zip(benign_zip, lambda i, d: [(i, d)] + (
            [(f"{root}notes.txt", evil_pickle)] if i.filename.endswith("data.pkl") else [])),
        "dangerous", "dangerous-import", "a pickle hidden in a member not named .pkl")
    add("zip_duplicate_data_pkl.pt",
        rewrite_zip(benign_zip, lambda i, d: ([(i.filename, evil_pickle)]
                                              if i.filename.endswith("data.pkl") else [])
                    + [(i, d)]),
        "dangerous", "duplicate-member", "two data.pkl records: the payload first")
    add("zip_name_mismatch.pt", patch_local_name(zip_evil, f"{root}data.pkl", f"{root}dbta.pkl"),
        "dangerous", "name-mismatch",
        "data.pkl's local header names another file: Python's zipfile refuses it, torch reads it")
    add("zip_dotdot.pt",
        rewrite_zip(benign_zip, lambda i, d: [(i, d)] + (
            [("../../evil.pkl", evil_pickle)] if i.filename.endswith("data.pkl") else [])),
        "dangerous", "unsafe-path", "a member path that climbs out with ..")
    add("zip_encrypted_flag.pt", set_flag_bits(zip_evil, f"{root}data.pkl", 1),
        "dangerous", "encrypted-member", "data.pkl flagged as encrypted")
    bad_crc = bytearray(zip_evil)
    pos = bad_crc.index(b"PK\x01\x02")
    while bad_crc[pos + 46:pos + 46 + len(root) + 8] != f"{root}data.pkl".encode():
        pos = bad_crc.index(b"PK\x01\x02", pos + 4)
    struct.pack_into("<I", bad_crc, pos + 16, 0xDEADBEEF)
    add("zip_bad_crc.pt", bytes(bad_crc), "dangerous", "dangerous-import",
        "a wrong CRC on data.pkl (a scanner that verifies CRCs gives up; torch does not)")
    add("zip_in_zip.zip",
        _plain_zip({"model/checkpoint.pt": zip_evil, "README.txt": b"weights"}),
        "dangerous", "dangerous-import", "a torch zip inside a plain zip")
    add("zip_in_tar.tar", tar_of({"release/model.pt": zip_evil}),
        "dangerous", "dangerous-import", "a torch zip inside a tar")
    add("zip_in_7z.7z", b"7z\xbc\xaf\x27\x1c\x00\x04" + zip_evil, "refused", None,
        "a 7z wrapper: refused with a reason, never called safe")
    inner = _zip_bytes(torch, {"x": Reduce(os.system, touch)},
                       _use_new_zipfile_serialization=False)
    nested = (b"\x80\x02ctorch.storage\n_load_from_bytes\nB" + struct.pack("<I", len(inner))
              + inner + b"\x85R.")
    add("nested_load_from_bytes.pkl", nested, "dangerous", "dangerous-import",
        "torch.storage._load_from_bytes: a nested torch.load of an embedded payload")

    # benign files (no payload) ------------------------------------------------------------------
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    add("benign_state_dict.pt", _zip_bytes(torch, model.state_dict()), "safe", None,
        "resnet18 state_dict")
    add("benign_whole_model.pt", _zip_bytes(torch, model), "needs-trust", "import",
        "torch.save(resnet18): model classes to import")
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    add("benign_training.ckpt", _zip_bytes(torch, {"epoch": 3, "model": model.state_dict(),
                                                    "optimizer": opt.state_dict(),
                                                    "loss": 0.25}),
        "safe", None, "training checkpoint with Adam state")
    add("benign_legacy.pt", _zip_bytes(torch, weights, _use_new_zipfile_serialization=False),
        "safe", None, "legacy format state dict")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)
    add("benign_quantized.pt", _zip_bytes(torch, {"q": q, "p": torch.nn.Parameter(torch.ones(2))}),
        "safe", None, "quantized tensor and a Parameter")
    add("benign_lazy_module.pt", _zip_bytes(torch, torch.nn.LazyLinear(3)), "needs-trust",
        "import", "LazyLinear: a bound method stored through getattr")
    import platform

    import numpy as np
    from torchvision.models import ResNet18_Weights

    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1,
                                               num_heads=1, hidden_dim=8, mlp_dim=8)
    add("benign_vit_whole.pt", _zip_bytes(torch, vit), "needs-trust", "import",
        "a VisionTransformer saved whole: functools.partial(nn.LayerNorm, eps=1e-6) inside")
    add("benign_lightning_hparams.ckpt",
        _zip_bytes(torch, {"state_dict": weights, "hyper_parameters": {
            "weights": ResNet18_Weights.IMAGENET1K_V1, "lr": 0.1}}),
        "needs-trust", "import", "Lightning-style hyper_parameters holding a torchvision "
        "Weights enum")
    uname = platform.uname_result("Linux", "trainer", "6.1.0", "#1 SMP", "x86_64")  # fixed
    add("benign_uname_rng.pt", _zip_bytes(torch, {"platform": uname,
                                                   "rng": np.random.default_rng(0)}),
        "needs-trust", "import", "platform.uname() and a numpy Generator")
    add("benign_plain.pkl", pickle.dumps({"lr": 0.1, "sizes": [1, 2, 3]}, protocol=4), "safe",
        None, "plain data in a bare pickle")
    add("benign_zip_of_weights.zip", _plain_zip({"a.pt": benign_zip}), "safe", None,
        "a plain zip holding a safe checkpoint")
    return samples


def _plain_zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    for s in build(folder, folder / "MARKER"):
        print(f"{s.expect:12s} {s.name:32s} {s.about}")
