"""Small seed files of every format for the fuzzer (needs torch, onnx, safetensors).

    python fuzz/make_seeds.py OUT_DIR

Made with the real writers (torch.save, torch.jit.save, torch.export.save, torch.onnx.export,
safetensors) plus the hostile corpus of tests/corpus.py and a checkpoint in torch's
pre-0.4 tar format (written by hand: torch still loads it but no longer writes it).
Every payload in them runs ``touch ckpt-fuzz-marker`` in the loader's working folder, the
marker the fuzzer's torch oracle looks for.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))


def make(out: Path) -> None:
    import payloads
    import tar_mutator
    import torch
    from safetensors.torch import save_file

    import corpus

    torch.manual_seed(0)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # a sample's files outside its archive (a link's target) are written here
    for sample in corpus.build(out / "corpus", Path(payloads.MARKER)):
        if sample.path.stat().st_size < 1 << 20:
            sample.path.rename(out / sample.name)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    sd = net.state_dict()
    torch.save(sd, out / "state_dict.pt")
    torch.save(sd, out / "state_dict_legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(net, out / "module.pt")
    torch.save({"x": torch.arange(6.0).reshape(2, 3)[:, 1:], "b": torch.ones(2).bfloat16(),
                "q": torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.quint8)
                if hasattr(torch, "quantize_per_tensor") else torch.ones(1)},
               out / "views_dtypes.pt", pickle_protocol=4)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"),
              metadata={"k": "v"})
    save_file({"a": torch.zeros(0), "b": torch.ones(2, 2, dtype=torch.float16),
               "c": torch.arange(3, dtype=torch.int64)}, str(out / "dtypes.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net.eval(), torch.randn(2, 4)).save(str(out / "traced.pt"))
        torch.onnx.export(net.eval(), torch.randn(2, 4), str(out / "model.onnx"), dynamo=False)
        linear = torch.nn.Linear(4, 3)
        program = torch.export.export(linear, (torch.randn(2, 4),))
        torch.export.save(program, str(out / "linear.pt2"))
    (out / "plain.pkl").write_bytes(pickle.dumps({"a": [1, 2.5, "x", (3,)], "b": b"\0" * 8}, 2))
    buf = io.BytesIO()
    pickle.dump(torch.ones(2), buf)
    (out / "tensor_pickle.pkl").write_bytes(buf.getvalue())
    (out / "legacy_tar.pt").write_bytes(tar_mutator.torch_tar([1.0, 2.0, 3.0], view=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.load(out / "legacy_tar.pt", weights_only=False)  # written here, benign
    assert loaded["v"].tolist() == [2.0, 3.0], loaded
    for leftover in (out / "corpus").iterdir():
        leftover.unlink()
    (out / "corpus").rmdir()


if __name__ == "__main__":
    make(Path(sys.argv[1]))
