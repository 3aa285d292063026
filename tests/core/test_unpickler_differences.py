"""Streams the real unpicklers accept and the reader refused, so that the payload after
them was never read ("not a checkpoint"), found by a red-team review; and a safetensors
file that is also a pickle ("safe"). Each is dangerous now, and an oracle shows each
payload runs under pickle.load (the C unpickler, which torch.load uses too)."""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest

from support import scan_file


def _cmd(marker) -> bytes:
    return b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


PREFIXES = {
    # READONLY_BUFFER needs no buffers argument: a read-only view of the bytes on top
    "readonly_buffer": b"C\x01x\x980",
    "readonly_bytearray": b"\x96" + struct.pack("<Q", 1) + b"x\x980",
    # APPEND(S) call .extend/.append on whatever is there; SETITEM(S) set items on it
    "appends_bytearray": b"\x96" + struct.pack("<Q", 0) + b"(K\x01e0",
    "append_bytearray": b"\x96" + struct.pack("<Q", 0) + b"K\x01a0",
    "setitem_list": b"]K\x00aK\x00K\x05s0",
    "setitems_list": b"]K\x00a(K\x00K\x05u0",
    # an APPENDS, SETITEMS or ADDITEMS with nothing after its MARK: C does nothing, whatever
    # is under it (found by differential fuzzing: "not a checkpoint" before the payload)
    "empty_appends_on_none": b"N(e0",
    "empty_setitems_on_none": b"N(u0",
    "empty_additems_on_int": b"\x80\x04K\x01(\x900",
    # C parses INT, LONG, FLOAT, GET and PUT's text as a C string: up to a NUL
    "int_nul": b"I5\x00x\n0",
    "long_nul": b"L5\x00junk\n0",
    "float_nul": b"F1.5\x00junk\n0",
    "put_get_nul": b"K\x07p3\x00junk\n0g3\x00zz\n0",
}


@pytest.mark.parametrize("name", PREFIXES)
def test_each_is_read_on_and_dangerous(tmp_path, marker, name):
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(PREFIXES[name] + _cmd(marker))
    _, report, error = scan_file(path)
    assert report.verdict == "dangerous", (name, error, report.findings)
    assert "posix.system" in report.flagged_names() or "os.system" in report.flagged_names()


@pytest.mark.slow
@pytest.mark.parametrize("name", PREFIXES)
def test_pickle_load_runs_each(tmp_path, name):
    ran = tmp_path / "ran"
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(PREFIXES[name] + _cmd(ran))
    pickle_load(str(path))
    assert ran.exists(), name


def pickle_load(path: str) -> None:
    """The oracle: ``pickle.load`` of the file, in a child process."""
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], "
                    "'rb'))", path], capture_output=True, timeout=60)


def _safetensors_pickle(marker) -> bytes:
    """b'S"' + six NULs: a header length of 0x2253 to safetensors, a STRING opcode whose
    quoted line runs through the JSON to pickle.load, which then runs what follows."""
    n = 0x2253
    prefix, suffix = b'{"__metadata__":{"x":"', b'"\n}}'
    header = prefix + b"y" * (n - len(prefix) - len(suffix)) + suffix
    return b'S"' + b"\0" * 6 + header + _cmd(marker)


def test_a_safetensors_file_that_is_a_pickle_is_a_polyglot(tmp_path, marker):
    path = tmp_path / "model.joblib"
    path.write_bytes(_safetensors_pickle(marker))
    ckpt, report, _ = scan_file(path)
    assert ckpt.format == "safetensors"
    assert report.verdict == "dangerous"
    assert any(f.code == "polyglot" for f in report.findings)
    assert "os.system" in report.flagged_names()
    ran = tmp_path / "ran"
    oracle = tmp_path / "oracle.pkl"
    oracle.write_bytes(_safetensors_pickle(ran))
    pickle_load(str(oracle))
    assert ran.exists()  # the oracle: pickle.load runs it


def _safetensors_pickle_past_the_head(marker) -> bytes:
    """As above, with a real 1 MiB tensor after the header: the pickle goes on through it
    (a BINBYTES over its bytes) to the payload at its end, far past what a URL's first
    read fetches."""
    import json

    size = 1 << 20
    cmd = _cmd(marker)
    data = b"B" + struct.pack("<I", size - 5 - len(cmd)) + b"\0" * (size - 5 - len(cmd)) + cmd
    n = 0x2253
    meta = json.dumps({"t": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}})
    prefix, suffix = meta[:-1].encode() + b',"__metadata__":{"x":"', b'"\n}}'
    header = prefix + b"y" * (n - len(prefix) - len(suffix)) + suffix
    return b'S"' + b"\0" * 6 + header + data


@pytest.mark.usefixtures("loopback_only")
def test_at_a_url_a_pickle_going_on_past_the_fetched_bytes_is_not_safe(tmp_path, marker):
    """Over a URL only the header is fetched: a pickle that is still going where the
    fetched bytes end may do anything after them, so the file is not called safe."""
    from safetensors.numpy import load_file

    from ckpt_inspector.core import open_checkpoint
    from ckpt_inspector.core.scan import scan

    from rangeserver import RangeServer

    path = tmp_path / "model.safetensors"
    path.write_bytes(_safetensors_pickle_past_the_head(marker))
    assert load_file(str(path))["t"].shape == (1 << 20,)  # a real safetensors file
    _, local, _ = scan_file(path)
    assert local.verdict == "dangerous" and "os.system" in local.flagged_names()
    with RangeServer(tmp_path) as rs:
        ckpt = open_checkpoint(rs.url("model.safetensors"))
        report = scan(ckpt)
        assert ckpt.metadata["remote"]["bytes"] < 1 << 20  # the tensor was not fetched
    assert report.verdict == "needs-trust", report.findings
    assert any(f.code == "polyglot-unread" for f in report.findings)
    assert not marker.exists()
    ran = tmp_path / "ran"
    oracle = tmp_path / "oracle.safetensors"
    oracle.write_bytes(_safetensors_pickle_past_the_head(ran))
    pickle_load(str(oracle))
    assert ran.exists()  # the oracle: pickle.load runs it


@pytest.mark.usefixtures("loopback_only")
def test_at_a_url_a_real_safetensors_file_is_no_polyglot(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from ckpt_inspector.core import open_checkpoint
    from ckpt_inspector.core.scan import scan

    from rangeserver import RangeServer

    for i in range(4):
        save_file({f"w{k}": np.zeros(1 << 16, np.float32) for k in range(1 + 9 * i)},
                  str(tmp_path / f"w{i}.safetensors"))
    with RangeServer(tmp_path) as rs:
        for i in range(4):
            report = scan(open_checkpoint(rs.url(f"w{i}.safetensors")))
            assert report.verdict == "safe", report.findings


def test_a_real_safetensors_file_is_no_polyglot(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    for i in range(4):  # headers of several lengths (first bytes that are opcodes or not)
        path = tmp_path / f"w{i}.safetensors"
        save_file({f"w{k}": np.zeros(2, np.float32) for k in range(1 + 9 * i)}, str(path))
        _, report, _ = scan_file(path)
        assert report.verdict == "safe", report.findings


def _nested_frame(marker) -> bytes:
    """A FRAME inside a 9,000-byte frame, reaching past its end: C's unpickler reading a
    file (pickle.load; torch.load's BytesIO of data.pkl) reads the new frame from the
    outer frame's end and runs what lies there, which a reader going straight on sees as
    the inside of a BINBYTES."""
    def frame(n):
        return b"\x95" + struct.pack("<Q", n)

    def binbytes(b):
        return b"B" + struct.pack("<I", len(b)) + b

    touch = f"touch {marker}".encode()
    evil = b"cos\nsystem\nX" + struct.pack("<I", len(touch)) + touch + b"\x85R."
    outer = 9000
    outer_end = 11 + outer  # PROTO, FRAME, the frame
    start = 2 + 9 + 9 + 5  # PROTO, two FRAMEs, BINBYTES' header
    end = outer_end + len(evil) + 16  # where the BINBYTES ends, read straight on
    hidden = bytearray(end - start)
    hidden[outer_end - start:outer_end - start + len(evil)] = evil
    inner = end - 19
    tail = b"0" + binbytes(bytes(outer_end + inner)) + b"0N."
    return (b"\x80\x04" + frame(outer) + frame(inner) + binbytes(bytes(hidden))
            + frame(len(tail)) + tail)


def test_a_frame_inside_a_frame_is_dangerous(tmp_path, marker):
    """Found by a red-team review: the reader went straight on and called it safe."""
    path = tmp_path / "nested.pkl"
    path.write_bytes(_nested_frame(marker))
    _, report, _ = scan_file(path)
    assert report.verdict == "dangerous"
    assert any(f.code == "frame-mismatch" and "inside another" in f.message
               for f in report.findings)
    ran = tmp_path / "ran"
    oracle = tmp_path / "oracle.pkl"
    oracle.write_bytes(_nested_frame(ran))
    pickle_load(str(oracle))
    assert ran.exists()  # the oracle: pickle.load runs it
    assert not marker.exists()



def test_a_line_running_past_its_frame_is_dangerous(tmp_path, marker):
    """Found by differential fuzzing: a FRAME of two bytes, 'c' and the start of a line.
    Read from a BytesIO (as torch.load reads data.pkl), C's unpickler drops the frame's
    rest and reads the module's line after the frame: os.system runs. This reader failed
    on the byte (invalid UTF-8) and called the file unrecognised."""
    def stream(m):
        return (b"\x95" + struct.pack("<Q", 2) + b"c\xff" + b"os\nsystem\n(S'touch "
                + str(m).encode() + b"'\ntR.")

    path = tmp_path / "frame.pkl"
    path.write_bytes(stream(marker))
    _, report, _ = scan_file(path)
    assert report.verdict == "dangerous"
    assert any(f.code == "frame-mismatch" and "past the end of its frame" in f.message
               for f in report.findings)
    ran = tmp_path / "ran"
    subprocess.run([sys.executable, "-c", "import io, pickle, sys; pickle.load(io.BytesIO("
                    "bytes.fromhex(sys.argv[1])))", stream(ran).hex()], capture_output=True,
                   timeout=60)
    assert ran.exists()
    assert not marker.exists()
