"""Will torch.load work? The prediction against torch itself.

Each file of the corpus is made with torch.save here, carrying the globals people meet
(argparse.Namespace, numpy scalars and arrays, pathlib paths, functools.partial, collections
types, a class of a module written here, whole torch.nn modules, omegaconf containers). One
child process then runs, for every file, ``torch.serialization.get_unsafe_globals_in_
checkpoint`` (the oracle for ``blocked_by``) and ``torch.load(path, map_location="cpu")``
with torch's default ``weights_only=True``, and then each suggested fix followed by that
load: the prediction must say what torch did, and the fix must make the load succeed.
Nothing here ever loads with ``weights_only=False``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import pathlib
import pickle
import pickletools
import subprocess
import sys
import warnings

import pytest

from ckpt_inspector.core.allowlist import WEIGHTS_ONLY_OPCODES
from ckpt_inspector.core.pickle import vm
from ckpt_inspector.core.safe_globals_fix import fix_code
from ckpt_inspector.core.torch_load_formats import READS_SAFETENSORS_PATHS
from ckpt_inspector.core.torch_load_prediction import TorchLoadPrediction, predict
from ckpt_inspector.core.weights_only import numpy_dtype_class

from support import Payload, scan_file

HELPER = "tlp_helpers"  # the module of the "custom class" files (written into tmp)
HELPER_CODE = """
import collections


class Config:
    def __init__(self, lr, name):
        self.lr, self.name = lr, name


Point = collections.namedtuple("Point", "x y")
"""

# The child: every plain load first (no fix has run yet), then each fix on a clean slate;
# then what torch's own tables are (what `import torch` allowed, what importing
# torch.distributed.tensor adds), which tools/gen_allowlist.py copied into allowlist.py.
CHILD = r"""
import json, pickle, sys, warnings
warnings.simplefilter("ignore")
import torch
import torch._weights_only_unpickler as wo
from torch._utils import IMPORT_MAPPING, NAME_MAPPING

cases = json.loads(sys.stdin.read())
base = torch.serialization.get_safe_globals()  # what `import torch` itself allowed
tables = {"after_import_torch": sorted(wo._get_user_allowed_globals()),
          "blocked_modules": sorted(wo._blocklisted_modules),
          "import_mapping": IMPORT_MAPPING,
          "name_mapping": [[list(k), list(v)] for k, v in NAME_MAPPING.items()],
          "opcodes": sorted(getattr(wo, n)[0] for n in dir(wo) if n.isupper()
                            and isinstance(getattr(wo, n), bytes)
                            and getattr(pickle, n, None) == getattr(wo, n))}
out = {}


def attempt(path):
    try:
        torch.load(path, map_location="cpu")
        return "ok"
    except Exception as err:
        lines = [l.strip() for l in str(err).splitlines() if l.strip()]
        why = [l for l in lines if "Unsupported" in l or "Can only" in l or "Cannot" in l]
        return f"{type(err).__name__}: {(why or lines or [''])[-1]}"[:300]


for case in cases:
    path = case["path"]
    try:
        oracle = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as err:
        oracle = None
    out[path] = {"oracle": oracle, "plain": attempt(path)}
for case in cases:
    if case.get("fix"):
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(base)
        try:
            exec(case["fix"], {})
            out[case["path"]]["fixed"] = attempt(case["path"])
        except Exception as err:
            out[case["path"]]["fixed"] = f"the fix itself failed: {type(err).__name__}: {err}"
torch.serialization.clear_safe_globals()
torch.serialization.add_safe_globals(base)
import torch.distributed.tensor
tables["after_import_dtensor"] = sorted(wo._get_user_allowed_globals())
print(json.dumps({"files": out, "tables": tables}))
"""


def torch_says(cases: list[dict], helper_dir) -> dict:
    """What torch does with each case (``{"path", "fix"}``), in one child process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(helper_dir), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(cases),
                          capture_output=True, text=True, timeout=300, env=env,
                          cwd=str(helper_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def helper_dir(tmp_path_factory):
    """A module of the user's own classes, importable while the corpus is saved."""
    folder = tmp_path_factory.mktemp("helpers")
    (folder / f"{HELPER}.py").write_text(HELPER_CODE)
    sys.path.insert(0, str(folder))
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(HELPER, None)


def _objects(torch):
    import numpy as np

    helpers = __import__(HELPER)
    w = torch.ones(2, 3)
    objs = {
        "state_dict": {"w": w, "b": torch.zeros(3)},
        "ordered_dict": collections.OrderedDict(w=w),
        "counter": {"w": w, "seen": collections.Counter(a=2)},
        "exception": {"w": w, "error": ValueError("bad")},  # allowed by `import torch`
        "namespace": {"w": w, "args": argparse.Namespace(lr=0.1, layers=[1, 2], name="x")},
        "numpy_scalars": {"w": w, "best": np.float64(0.5), "step": np.int64(3),
                          "ok": np.bool_(True)},
        "numpy_arrays": {"w": w, "a": np.arange(6, dtype=np.float32).reshape(2, 3),
                         "b": np.array([1, 2], dtype=np.int16), "c": np.array(["ab", "c"])},
        "posix_path": {"w": w, "out": pathlib.PosixPath("/tmp/run")},
        "partial": {"w": w, "act": functools.partial(torch.nn.functional.relu, inplace=False)},
        "defaultdict_empty": {"w": w, "d": collections.defaultdict(list)},
        "defaultdict_items": {"w": w, "d": collections.defaultdict(list, {"a": [1]})},
        "deque": {"w": w, "q": collections.deque([1, 2])},
        "namedtuple": {"w": w, "p": helpers.Point(1, 2)},
        "custom_class": {"w": w, "cfg": helpers.Config(0.1, "x")},
        "nn_module": torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(),
                                         torch.nn.BatchNorm1d(2)),
        "frozenset_slice": {"w": w, "s": frozenset([1, 2]), "sl": slice(1, 5)},
    }
    try:
        from omegaconf import OmegaConf
    except ImportError:
        pass
    else:
        objs["omegaconf"] = {"w": w, "cfg": OmegaConf.create(
            {"lr": 0.1, "layers": [1, 2], "model": {"name": "x", "drop": None}})}
    return objs


@pytest.fixture(scope="module")
def load_corpus(torch, helper_dir, tmp_path_factory):
    """name -> path of each file, and the marker the dangerous one would create."""
    folder = tmp_path_factory.mktemp("torch-load")
    marker = folder / "PWNED-marker"
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, obj in _objects(torch).items():
            paths[name] = folder / f"{name}.pt"
            torch.save(obj, paths[name])
        paths["legacy_namespace"] = folder / "legacy_namespace.pt"
        torch.save({"w": torch.ones(2), "args": argparse.Namespace(a=1)},
                   paths["legacy_namespace"], _use_new_zipfile_serialization=False)
        paths["protocol_4"] = folder / "protocol_4.pt"
        torch.save({"w": torch.ones(2)}, paths["protocol_4"], pickle_protocol=4)
        paths["dangerous"] = folder / "dangerous.pt"
        torch.save({"w": torch.ones(2), "x": Payload(f"touch {marker}")}, paths["dangerous"])
        paths["torchscript"] = folder / "script.pt"
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), paths["torchscript"])
        from safetensors.torch import save_file

        paths["safetensors"] = folder / "w.safetensors"
        save_file({"w": torch.ones(2)}, paths["safetensors"])
        paths["safetensors_named_bin"] = folder / "w_safetensors.bin"
        paths["safetensors_named_bin"].write_bytes(paths["safetensors"].read_bytes())
        paths["plain_pickle"] = folder / "plain.pkl"
        paths["plain_pickle"].write_bytes(pickle.dumps({"a": [1, 2]}, protocol=2))
    return paths, marker


@pytest.fixture(scope="module")
def predictions(load_corpus):
    paths, _marker = load_corpus
    out = {}
    for name, path in paths.items():
        ckpt, report, error = scan_file(str(path))
        out[name] = predict(ckpt, report, error)
    return out


@pytest.fixture(scope="module")
def torch_run(load_corpus, predictions, helper_dir):
    paths, _marker = load_corpus
    cases = [{"path": str(paths[n]), "fix": p.fix} for n, p in predictions.items()]
    return torch_says(cases, helper_dir)


@pytest.fixture(scope="module")
def torch_results(torch_run):
    return torch_run["files"]


# what each file must get: loads as it is, or the fix makes it load, or no fix (and why)
LOADS = {"state_dict", "ordered_dict", "counter", "exception", "safetensors"}
FIXED = {"namespace", "numpy_scalars", "numpy_arrays", "posix_path", "partial",
         "defaultdict_empty", "namedtuple", "custom_class", "nn_module", "frozenset_slice",
         "omegaconf", "legacy_namespace"}
NO_FIX = {"defaultdict_items": "SETITEMS", "deque": "APPENDS", "protocol_4": "opcode",
          "dangerous": "dangerous", "torchscript": "TorchScript",
          "safetensors_named_bin": ".safetensors", "plain_pickle": "plain pickle"}


def test_the_corpus_covers_every_expectation(load_corpus):
    paths, _ = load_corpus
    assert set(paths) - {"omegaconf"} == (LOADS | FIXED | NO_FIX.keys()) - {"omegaconf"}


def test_prediction_matches_what_torch_load_does(predictions, torch_results, load_corpus):
    paths, _ = load_corpus
    for name, pred in predictions.items():
        said = torch_results[str(paths[name])]
        assert pred.weights_only == (said["plain"] == "ok"), (name, said["plain"], pred)
        if said["oracle"] is not None:  # a torch.save zip: the oracle's list, name for name
            assert pred.blocked_by == said["oracle"], name


def test_the_fix_makes_torch_load_succeed(predictions, torch_results, load_corpus):
    paths, _ = load_corpus
    for name in FIXED & predictions.keys():
        pred = predictions[name]
        assert pred.fix and not pred.weights_only, name
        assert torch_results[str(paths[name])]["fixed"] == "ok", (name, pred.fix)


def test_which_files_load_and_which_cannot_be_fixed(predictions):
    for name in LOADS:
        assert predictions[name].weights_only and predictions[name].fix is None, name
    for name, why in NO_FIX.items():
        pred = predictions[name]
        assert not pred.weights_only and pred.fix is None, name
        assert why in (pred.problem or "") + pred.headline(), (name, pred.problem)


def test_the_numpy_fix_names_what_torch_needs(predictions):
    fix = predictions["numpy_arrays"].fix
    assert "numpy._core.multiarray._reconstruct" in fix and "numpy.ndarray" in fix
    for cls in ("Float32DType", "Int16DType", "StrDType"):
        assert f"numpy.dtypes.{cls}" in fix
    scalars = predictions["numpy_scalars"].fix
    for cls in ("Float64DType", "Int64DType", "BoolDType"):
        assert f"numpy.dtypes.{cls}" in scalars


def test_omegaconf_containers_are_covered(predictions, torch_results, load_corpus):
    pytest.importorskip("omegaconf", reason="omegaconf is not installed (the test extra)")
    paths, _ = load_corpus
    pred = predictions["omegaconf"]
    assert "omegaconf.dictconfig.DictConfig" in pred.blocked_by and "typing.Any" in pred.fix
    assert torch_results[str(paths["omegaconf"])]["fixed"] == "ok"


def test_a_dangerous_file_gets_no_fix_and_never_runs(predictions, torch_results, load_corpus):
    paths, marker = load_corpus
    pred = predictions["dangerous"]
    assert pred.dangerous and pred.fix is None and "posix.system" in pred.blocked_by
    assert pred.headline().startswith("do not load this file")
    assert "payload" in (pred.older_torch or "")
    assert torch_results[str(paths["dangerous"])]["plain"] != "ok"
    assert not marker.exists()


def test_what_each_format_says(predictions):
    assert predictions["torchscript"].loader.startswith("torch.jit.load")
    assert predictions["safetensors"].loader.startswith("safetensors.torch.load_file")
    assert "mmap=True fails" in predictions["legacy_namespace"].mmap
    assert "mmap=True works" in predictions["state_dict"].mmap
    assert "imports argparse.Namespace" in predictions["namespace"].older_torch
    assert "nothing else runs" in predictions["state_dict"].older_torch
    doc = predictions["namespace"].to_json()
    assert doc["map_location"] == "cpu" and doc["allowlist_from"]
    assert doc["default_weights_only"] is True  # the installed torch is >= 2.6


def test_safetensors_by_path_matches_the_installed_torch(torch_results, load_corpus):
    paths, _ = load_corpus
    assert (torch_results[str(paths["safetensors"])]["plain"] == "ok") == \
        READS_SAFETENSORS_PATHS


def test_the_hostile_corpus_too(corpus, helper_dir):
    """Every readable file of tests/corpus.py (crafted zips: duplicate or hidden data.pkl, a
    .pt2 with a data.pkl, records outside the root folder, legacy and tar tricks, ...):
    the prediction says what torch.load does. Its payloads never run (weights_only=True)."""
    predicted = {}
    for sample in corpus:
        if sample.name in TORCH_TAKES_MINUTES:
            continue
        try:
            ckpt, report, error = scan_file(str(sample.path))
        except AssertionError:  # refused: nothing read to predict from
            continue
        if not ckpt.files:
            predicted[str(sample.path)] = predict(ckpt, report, error)
    assert len(predicted) > 80
    said = torch_says([{"path": p} for p in predicted], helper_dir)["files"]
    wrong = [f"{os.path.basename(p)}: predicted {pred.weights_only} {pred.blocked_by}, torch "
             f"{said[p]['plain']} {said[p]['oracle']}" for p, pred in predicted.items()
             if pred.weights_only != (said[p]["plain"] == "ok") or (
                 said[p]["oracle"] is not None and said[p]["oracle"] != pred.blocked_by)]
    assert not wrong, "\n".join(wrong)


# Python's tarfile spends two minutes on this one's pax header before torch.load fails
TORCH_TAKES_MINUTES = {"tar_pax_digits.pt"}


# -- the pieces ----------------------------------------------------------------------------
def test_the_vm_notes_exactly_the_opcodes_torch_does_not_read():
    t = (1, 2)
    obj = {"a": [1, 2.5, "s", b"by", bytearray(b"x"), None, True, {1, 2}, frozenset([3]),
                 2**100, 2**3000, t, t, (t,)], "ns": argparse.Namespace(a=1),
           "od": collections.OrderedDict(a=1)}
    for protocol in range(6):
        data = pickle.dumps(obj, protocol)
        used = {op.code.encode("latin-1")[0] for op, _arg, _pos in pickletools.genops(data)}
        assert set(vm.load(data).rare_opcodes) == used - WEIGHTS_ONLY_OPCODES, protocol


def test_names_that_are_not_identifiers_get_no_code():
    assert fix_code([("argparse", "Namespace")]) is not None
    for module, name in [("os; import shutil", "x"), ("a", "b)\nimport os  #"),
                         ("mod", "class"), ("", "x"), ("a..b", "c")]:
        assert fix_code([(module, name)]) is None, (module, name)


def test_numpy_dtype_classes():
    assert numpy_dtype_class("f8") == "Float64DType"
    assert numpy_dtype_class("u2") == "UInt16DType"
    assert numpy_dtype_class("U12") == "StrDType"
    assert numpy_dtype_class("f16") == "LongDoubleDType"
    assert numpy_dtype_class("?") is None


def test_the_dtype_table_matches_numpy():
    import numpy as np

    for code in ("b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8",
                 "c8", "c16", "O8", "U3", "S2", "V4", "M8", "m8"):
        assert type(np.dtype(code)) is getattr(np.dtypes, numpy_dtype_class(code)), code


def test_tables_generated_from_torch_match_it(torch_run):
    """What a fresh `import torch` allows, what importing torch.distributed.tensor adds, the
    blocked modules, the opcodes and the name mapping (asked of the child, whose torch had
    imported nothing else): else run tools/gen_allowlist.py."""
    from ckpt_inspector.core import allowlist as a

    t = torch_run["tables"]
    assert set(t["after_import_torch"]) == a.ALLOWED_AFTER_IMPORT_TORCH
    assert a.ALLOWED_AFTER_IMPORT["torch.distributed.tensor"] <= set(t["after_import_dtensor"])
    assert set(t["blocked_modules"]) == a.BLOCKED_MODULES
    assert set(t["opcodes"]) == a.WEIGHTS_ONLY_OPCODES
    assert t["import_mapping"] == a.IMPORT_MAPPING
    assert {tuple(k): tuple(v) for k, v in t["name_mapping"]} == a.NAME_MAPPING


def test_lines_for_scan():
    pred = TorchLoadPrediction(False, ["argparse.Namespace"],
                               fix="import torch\nimport argparse\n\n"
                                   "torch.serialization.add_safe_globals([\n"
                                   "    argparse.Namespace,\n])\n")
    first, second = pred.lines()
    assert "refuses argparse.Namespace" in first
    assert second.startswith("fix: torch.serialization.add_safe_globals([argparse.Namespace])")


def test_a_file_that_could_not_be_read_is_not_said_to_run_a_payload(tmp_path):
    """A download cut in half: nothing dangerous is in what was read, so the verdict stays
    dangerous (nothing vouches for the rest) but no sentence claims a payload; a payload
    read before the cut is still called one."""
    import torch

    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.zeros(64, 64)}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    ckpt, report, error = scan_file(cut)
    pred = predict(ckpt, report, error)
    assert report.verdict == "dangerous" and pred.dangerous and pred.unread
    assert "could not be read whole" in pred.headline()
    assert "is dangerous" not in pred.headline() and "payload" not in pred.older_torch
    assert "nothing dangerous is in what could be read" in pred.older_torch

    marker = tmp_path / "ran"
    stream = pickle.dumps({"a": Payload(f"touch {marker}"), "b": list(range(1000))},
                          protocol=2)
    bad = tmp_path / "payload_then_cut.pkl"
    bad.write_bytes(stream[: len(stream) - 200])  # the payload, then the data ends
    ckpt, report, error = scan_file(bad)
    pred = predict(ckpt, report, error)
    assert error and report.verdict == "dangerous" and not pred.unread
    assert "it is dangerous" in pred.headline() and "payload" in pred.older_torch
    assert not marker.exists()


def _long_then(payload_stream: bytes) -> bytes:
    """A LONG4 just over this reader's 1 MiB bound, popped, then ``payload_stream``'s
    opcodes: Python's unpickler reads on to the payload; this reader stops at the LONG4."""
    import struct

    n = (1 << 20) + 1
    return (b"\x80\x02\x8b" + struct.pack("<i", n) + b"\x01" * n + b"0"
            + payload_stream[2:])


def test_a_payload_behind_a_readers_bound_is_not_said_to_be_unread(tmp_path):
    """torch.load reads past every bound of this reader: what lies behind one is not known,
    and may be a payload. The verdict is dangerous, and no sentence says the file merely
    could not be read or that torch fails too (as a plain pickle and as a torch zip)."""
    import zipfile

    marker = tmp_path / "ran"
    stream = _long_then(pickle.dumps(Payload(f"touch {marker}"), protocol=2))
    plain = tmp_path / "long.pkl"
    plain.write_bytes(stream)
    archive = tmp_path / "long.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("archive/data.pkl", stream)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    for path in (plain, archive):
        ckpt, report, error = scan_file(path)  # the plain one was 'not recognised'
        pred = predict(ckpt, report, error)
        assert report.verdict == "dangerous" and error and "LONG4" in error, (path, error)
        assert not pred.unread and "could not be read whole" not in pred.headline()
        assert "it is dangerous" in pred.headline()
    assert not marker.exists()
