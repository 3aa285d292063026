""".pt2 files (torch.export) read the way ``torch.export.load`` reads them: every pickle it
runs is interpreted as run, native code and evaluated strings are findings, malformed JSON
never hides a payload, and the JSON is bounded."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
import zipfile
import zlib

import pytest

from ckpt_inspector.core.formats import pt2

import hostile_zip as H
from support import ROOT, build_sample, payload, run_limited, scan_file

PT2_SAMPLES = [s for s in H.SAMPLES if s[0].startswith("pt2")]


@pytest.mark.parametrize("sample", PT2_SAMPLES, ids=[s[0] for s in PT2_SAMPLES])
def test_pt2_payloads_are_found_and_nothing_runs(torch, tmp_path, marker, sample):
    name, builder, expect, code, _about = sample
    path = tmp_path / name
    path.write_bytes(build_sample(torch, builder, marker))
    ckpt, report, _error = scan_file(path)
    assert ckpt.format == "pt2"
    assert report.verdict == expect, [f.message for f in report.findings]
    assert code in {f.code for f in report.findings}
    if code == "dangerous-import":
        assert any(p.executed and any(g.full_name.endswith(".system") for g in p.result.globals)
                   for p in ckpt.pickles), "the payload must count as run by the loader"


def test_each_pt2_payload_is_live(torch, tmp_path):
    """In a child process the real loaders run every payload above."""
    jobs = []
    for name, loader in H.LIVE.items():
        if not name.startswith("pt2"):
            continue
        builder = next(b for n, b, *_ in H.SAMPLES if n == name)
        flag = tmp_path / f"ran-{name}"
        path = tmp_path / name
        path.write_bytes(build_sample(torch, builder, flag))
        jobs.append((str(path), str(flag), loader))
    script = ("import json, os, sys, warnings, logging, torch\nwarnings.simplefilter('ignore')\n"
              "logging.disable(logging.CRITICAL)\nout = {}\n"
              "for path, flag, loader in json.loads(sys.argv[1]):\n"
              "    try:\n"
              "        if loader == 'torch.load':\n"
              "            torch.load(path, weights_only=False)\n"
              "        else:\n"
              "            torch.export.load(path)\n"
              "    except Exception:\n        pass\n"
              "    out[path] = os.path.exists(flag)\nprint(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(jobs)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    ran = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ran and all(ran.values()), ran


def test_real_exports_are_safe(torch, tmp_path):
    """No false alarm on what torch.export.save writes, dynamic shapes included."""
    for dynamic in (False, True):
        path = tmp_path / f"real{dynamic}.pt2"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path.write_bytes(H.simple_zip(H._pt2_parts(torch, dynamic)))
        ckpt, report, error = scan_file(path)
        assert error is None and report.verdict == "safe", [f.message for f in report.findings]
        assert ckpt.metadata["nodes"] > 0


def _mangled(parts, root):
    def weights(cfg):
        entries = list(cfg["config"])
        cfg["config"][entries[0]]["tensor_meta"] = {"sizes": {"as_int": 3}, "strides": "x",
                                                    "device": "cpu", "dtype": [7],
                                                    "storage_offset": [1]}
        cfg["config"][entries[1]]["path_name"] = 12
        cfg["config"]["str"] = "entry"
        cfg["config"]["none"] = None
        cfg["config"]["deep"] = {"path_name": "weight_0", "tensor_meta": {"sizes": [[1]]}}
        return cfg
    out = H._set_json(parts, "data/weights/model_weights_config.json", weights)
    out = H._set_json(out, "models/model.json", lambda m: {"graph_module": [1, 2],
                                                             "guards_code": "x"})
    return out


@pytest.mark.parametrize("case", ["types", "config-list", "not-json"])
def test_malformed_json_never_hides_the_pickles(torch, tmp_path, marker, case):
    parts = H._pt2_parts(torch)
    root = parts[0][0].split("/", 1)[0]
    if case == "types":
        parts = _mangled(parts, root)
    elif case == "config-list":
        parts = [(n, b"[1, 2, 3]" if n.endswith("_config.json") else d) for n, d in parts]
    else:
        parts = [(n, b"{not json" if n.endswith(".json") else d) for n, d in parts]
    parts.insert(1, (f"{root}/data/constants/opaque_obj_0", payload(marker)))
    if case == "types":
        def consts(cfg):
            cfg["config"]["hook"] = {"path_name": "opaque_obj_0", "tensor_meta": None}
            return cfg
        parts = H._set_json(parts, "data/constants/model_constants_config.json", consts)
    path = tmp_path / f"{case}.pt2"
    path.write_bytes(H.simple_zip(parts))
    _ckpt, report, _error = scan_file(path)
    assert report.verdict == "dangerous"
    # the opaque record is read even when its config cannot be: it parses as a pickle
    assert "posix.system" in report.globals or "os.system" in report.globals


@pytest.mark.parametrize("text", [
    "Symbol('s31', positive=True, integer=True)",
    "Mul(Integer(2), Symbol('s0', positive=True, integer=True))",
    "FloorDiv(s0, 2) + Mod(s1, 3)*4 <= 65535",
    "Max(1, Min(s0, u3))",
])
def test_expressions_torch_writes_pass(text):
    assert pt2.unsafe_expression(text) is None


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch x')",
    "S('__import__(\"os\")')",  # S(...) is sympify: an eval of its string
    "FloorDiv('__import__(\"os\").system(1)', 2)",  # Functions sympify string arguments
    "Symbol('x').__class__",
    "(lambda: 1)()",
    "sympify('1')",
    "Symbol('s0', **{'a': 1})",
    "[c for c in ()]",
])
def test_expressions_with_code_are_refused(text):
    assert pt2.unsafe_expression(text)


def test_guards_code_is_checked():
    assert pt2.unsafe_expression("L['x'].size()[0] <= 65535", guards=True) is None
    assert pt2.unsafe_expression("L['x'].size()[0] == 3 and L['y'].stride()[1] == 1",
                                 guards=True) is None
    assert pt2.unsafe_expression("__import__('os').system('x')", guards=True)
    assert pt2.unsafe_expression("L['x'].__class__.__base__", guards=True)


def _deflated(text_head: bytes, size: int) -> bytes:
    chunk = 1 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = c.compress(text_head.ljust(chunk, b" ")) + c.flush(zlib.Z_FULL_FLUSH)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    spaces = c.compress(b" " * chunk) + c.flush(zlib.Z_FULL_FLUSH)
    return out + spaces * (size // chunk - 1) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def test_graph_json_of_256_mb_is_capped(torch, tmp_path):
    parts = H._pt2_parts(torch)
    z = H.RawZip()
    recs = []
    for n, d in parts:
        if n.endswith("models/model.json"):
            recs.append(z.add_deflated(n, _deflated(b'{"graph_module": {"nodes": [', 256 << 20),
                                       256 << 20))
        elif n.endswith("model_weights_config.json"):  # a lying size: inflates past it
            recs.append(z.add_deflated(n, _deflated(b'{"config": {', 256 << 20), len(d)))
        else:
            recs.append(z.add(n, d))
    path = tmp_path / "big_json.pt2"
    path.write_bytes(z.finish(recs))

    proc = run_limited("scan", "--json", str(path))
    out = json.loads(proc.stdout)
    assert "unscanned-member" in {f["code"] for f in out["findings"]}
    assert out["verdict"] == "needs-trust"
    assert proc.peak_kib < 1 << 20  # KiB


def test_legacy_layout_is_read_with_zipfile(torch, tmp_path, marker):
    """The fallback torch.export.load takes reads exact names with Python's zipfile."""
    path = tmp_path / "legacy.pt2"
    path.write_bytes(build_sample(torch, H.pt2_legacy_layout, marker))
    ckpt, report, _error = scan_file(path)
    members = {p.member for p in ckpt.pickles if p.executed}
    assert any(m.startswith("serialized_constants.pt") for m in members), members
    assert report.verdict == "dangerous"


def test_aoti_package_needs_trust_even_without_a_known_suffix(torch, tmp_path):
    parts = H._pt2_parts(torch)
    root = parts[0][0].split("/", 1)[0]
    parts.insert(1, (f"{root}/data/aotinductor/model/kernels.bin", b"\0" * 16))
    path = tmp_path / "aoti.pt2"
    path.write_bytes(H.simple_zip(parts))
    _ckpt, report, _error = scan_file(path)
    assert report.verdict == "needs-trust"
    assert "native-code" in {f.code for f in report.findings}


def test_native_code_hidden_under_another_name(torch, tmp_path):
    parts = H._pt2_parts(torch)
    root = parts[0][0].split("/", 1)[0]
    parts.insert(1, (f"{root}/extra/readme.txt", b"\x7fELF\x02\x01\x01" + b"\0" * 64))
    path = tmp_path / "elf.pt2"
    path.write_bytes(H.simple_zip(parts))
    _ckpt, report, _error = scan_file(path)
    assert report.verdict == "needs-trust"


def test_pt2_in_a_plain_zip(torch, tmp_path, marker):
    inner = build_sample(torch, H.pt2_opaque_constant, marker)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("exports/model.pt2", inner)
    path = tmp_path / "bundle.zip"
    path.write_bytes(out.getvalue())
    _ckpt, report, _error = scan_file(path)
    assert report.verdict == "dangerous"
