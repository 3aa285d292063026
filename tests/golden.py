"""Golden outputs of the command line: what every command prints with ``--json`` and the
exit status it ends with, on a corpus of every format (made with the real libraries,
deterministically: fixed seeds, fixed names, a relative marker path) and the hostile
corpus. Recorded once and compared after every change that should not change behaviour
(tests/test_golden.py); a change that should re-records them, and the diff is reviewed.

    python tests/golden.py make OUT        # write the corpus into OUT
    python tests/golden.py record OUT      # the outputs as JSON on stdout
    python tests/golden.py update          # make + record into tests/golden/cli.json.gz
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import sys
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "cli.json.gz"
sys.path.insert(0, str(HERE))


def make(out: Path) -> None:
    """Benign files of every format (out/) and the hostile corpus (out/hostile/)."""
    import torch

    from conftest import all_dtype_tensors
    from support import TinyNet

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    model = TinyNet.make(torch).eval()
    sd = model.state_dict()
    torch.save(torch.rand(3, 4), out / "tensor.pt")
    torch.save({"x": torch.rand(3, 4), "y": torch.ones(2, 2), "n": 3, "s": "text"},
               out / "dict.pt")
    torch.save(sd, out / "state_dict.pth")
    torch.save(torch.nn.DataParallel(model).state_dict(), out / "dp.pth")
    torch.save(model, out / "whole_model.pt")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    loss = model(torch.randn(2, 3, 8, 8)).sum()
    loss.backward()
    optimizer.step()
    torch.save({"epoch": 7, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(), "loss": 0.5},
               out / "training.ckpt")
    torch.save(all_dtype_tensors(torch), out / "dtypes.pt")
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    torch.save({"base": base, "row": base[2], "cols": base[:, 3:7], "t": base.t()},
               out / "views.pt")
    torch.save({"w": torch.arange(12.0).reshape(3, 4), "step": 3}, out / "legacy_dict.pt",
               _use_new_zipfile_serialization=False)
    torch.save(model, out / "legacy_model.pt", _use_new_zipfile_serialization=False)
    torch.jit.script(model).save(str(out / "scripted.pt"))
    torch.onnx.export(model, torch.randn(1, 3, 8, 8), str(out / "tiny.onnx"), dynamo=False,
                      input_names=["image"], output_names=["logits"])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 8, 8),)),
                      str(out / "program.pt2"))
    (out / "plain.pkl").write_bytes(pickle.dumps({"a": [1, 2.5, "x"], "b": None}, protocol=4))
    with zipfile.ZipFile(out / "release.zip", "w") as z:
        z.write(out / "state_dict.pth", "release/model.pth")
        z.writestr("release/README.txt", "weights")
    with tarfile.open(out / "release.tar", "w") as t:
        t.add(out / "state_dict.pth", "release/model.pth")
    import corpus

    (out / "hostile").mkdir()
    os.chdir(out / "hostile")  # a link's target outside its archive is written there
    corpus.build(out / "hostile", Path("MARKER"))


STATS = ("tensor.pt", "dict.pt", "state_dict.pth", "dtypes.pt", "views.pt", "legacy_dict.pt",
         "model.safetensors")
DIFFS = (("state_dict.pth", "model.safetensors"), ("state_dict.pth", "dp.pth"),
         ("state_dict.pth", "training.ckpt"), ("tensor.pt", "dict.pt"))


def _run(argv: list[str]) -> dict:
    from ckpt_inspector import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(argv)
        except SystemExit as stop:
            status = stop.code
    text = out.getvalue()
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    return {"status": status, "stdout": value, "stderr": err.getvalue().strip()}


def _install_paths() -> list[bytes]:
    """Folders whose path a saved file may hold: torch's (source file names in TorchScript
    debug records, ``.pt2`` stack traces, a legacy whole-model pickle) and this checkout's."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    site = Path(spec.origin).parent.parent if spec and spec.origin else None
    return [str(p).encode() for p in (site, HERE.parent) if p is not None]


def _holds(path: Path, needles: list[bytes]) -> bool:
    """Whether the file, or a compressed member of it as a zip, holds one of ``needles``."""
    blobs = [path.read_bytes()]
    with contextlib.suppress(Exception), zipfile.ZipFile(path) as z:
        blobs += [z.read(i) for i in z.infolist() if i.compress_type and i.file_size < 1 << 24]
    return any(n in blob for n in needles for blob in blobs)


def record(folder: Path) -> dict[str, dict]:
    """``{command line: {status, stdout, stderr}}`` with the folder written as ``<corpus>``.
    A file that holds an install path (see :func:`_install_paths`) has a size and offsets
    that depend on where the checkout and its venv are, so those are left out for it."""
    folder = folder.resolve()
    runs: dict[str, list[str]] = {}
    located: set[str] = set()
    paths = _install_paths()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "MARKER"):
        rel = path.relative_to(folder).as_posix()
        if _holds(path, paths):
            located.add(rel)
        runs[f"info --json {rel}"] = ["info", "--json", str(path)]
        runs[f"scan --json {rel}"] = ["scan", "--json", str(path)]
        if rel in STATS:
            runs[f"stats --json --bins 8 {rel}"] = ["stats", "--json", "--bins", "8", str(path)]
    for a, b in DIFFS:
        runs[f"diff --json {a} {b}"] = ["diff", "--json", str(folder / a), str(folder / b)]
    cwd = os.getcwd()
    os.chdir(folder)  # a payload that ran would create ./MARKER, which the test looks for
    try:
        results = {name: _run(argv) for name, argv in runs.items()}
    finally:
        os.chdir(cwd)
    text = json.dumps(results, sort_keys=True).replace(str(folder), "<corpus>")
    return {name: _stable(result, located=name.split()[-1] in located)
            for name, result in json.loads(text).items()}


def _stable(value, keys: dict | None = None, located: bool = False):
    """Without what differs between two makes or runs of the same corpus: timings, the
    storage keys of the legacy format (memory addresses at save time), numbered instead,
    and for a file that holds an install path its size and byte offsets."""
    keys = {} if keys is None else keys
    dropped = {"seconds", "file_size", "offset"} if located else {"seconds"}
    if isinstance(value, dict):
        out = {k: _stable(v, keys, located) for k, v in value.items() if k not in dropped}
        storage = out.get("storage")
        if isinstance(storage, dict) and str(storage.get("key", "")).isdigit() \
                and len(storage["key"]) > 8:
            storage["key"] = keys.setdefault(storage["key"], f"<storage {len(keys)}>")
        return out
    if isinstance(value, list):
        return [_stable(v, keys, located) for v in value]
    return value


def load_golden() -> dict[str, dict]:
    return json.loads(gzip.decompress(GOLDEN.read_bytes()))


def main() -> None:
    command = sys.argv[1]
    if command == "make":
        make(Path(sys.argv[2]))
    elif command == "record":
        json.dump(record(Path(sys.argv[2])), sys.stdout, sort_keys=True)
    elif command == "update":
        import subprocess

        with tempfile.TemporaryDirectory() as tmp:  # each step in its own process, as the test
            for step in ("make", "record"):
                proc = subprocess.run([sys.executable, __file__, step, tmp], check=True,
                                      capture_output=True, text=True)
            results = json.loads(proc.stdout)
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_bytes(gzip.compress(json.dumps(results, sort_keys=True,
                                                    indent=0).encode(), mtime=0))
        print(f"{len(results)} command lines recorded in {GOLDEN}")


if __name__ == "__main__":
    main()
