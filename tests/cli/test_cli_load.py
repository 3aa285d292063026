"""``ckpt-inspector load``: a file you trust, loaded with torch onto a device."""

from __future__ import annotations

import json

from support import run_cli


def test_load_with_torch_onto_a_device(cuda_file, numpy_namespace_file):
    """A file saved on cuda:0 loads onto the cpu: the device picker's map_location."""
    proc = run_cli("load", str(cuda_file[0]), "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["devices"] == ["cpu"] and result["tensors"] == len(cuda_file[1])
    refused = run_cli("load", str(numpy_namespace_file[0]))
    assert refused.returncode == 1
    assert "run code" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
