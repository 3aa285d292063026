"""GGUF files (llama.cpp): structure against gguf's own reader, values against its own
dequantization, and hostile headers refused in bounded time."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.formats import detect_format, open_checkpoint
from ckpt_inspector.core.layouts import open_checkpoint as open_any
from ckpt_inspector.core.ops import stats
from ckpt_inspector.core.ops.passes import element_chunks
from ckpt_inspector.core.ops.slices import TensorSlice, heatmap, save_npy
from ckpt_inspector.core.progress import run
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tree import key_of

from gguf_files import SPLIT_NAMES, TOKENS, hostile, write_gguf, write_gguf_split

gguf = pytest.importorskip("gguf")

PLAIN = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory):
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _tensors(path):
    ckpt = open_any(path)
    return ckpt, {key_of(p): n.tensor for p, n in ckpt.tensors()}


def _reference(t) -> np.ndarray:
    """The tensor's values as gguf's reader and dequantizer give them, row-major."""
    values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    return np.asarray(values, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist())))


def test_structure_matches_gguf_reader(gguf_file):
    ckpt, tensors = _tensors(gguf_file)
    assert detect_format(gguf_file) == "gguf" and ckpt.format == "gguf"
    assert scan(ckpt).verdict == "safe"
    reader = gguf.GGUFReader(str(gguf_file))
    assert list(tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        info = tensors[t.name]
        ggml = t.tensor_type.name
        assert info.dtype == PLAIN.get(ggml, ggml.lower())
        # gguf lists dims fastest first; shown rows first, as numpy does
        assert info.shape == tuple(reversed(t.shape.tolist())) == _reference(t).shape
        assert info.numel == t.n_elements
        assert info.nbytes == t.n_bytes, t.name
        assert info.problem is None
    assert tensors["blk.1.ffn_down.weight"].shape == (2, 3, 512)
    meta = ckpt.metadata
    assert meta["general.architecture"] == "llama" and meta["general.name"] == "tiny"
    assert meta["llama.block_count"] == 2 and meta["GGUF version"] == 3
    assert meta["tokenizer.ggml.tokens"] == {"length": len(TOKENS), "type": "string",
                                             "first": TOKENS[:8]}
    assert meta["small.list"] == [1, 2, 3]
    assert meta["GGUF tensor types"] == {"F32": 2, "F16": 1, "BF16": 1, "Q8_0": 1, "Q4_0": 1,
                                         "Q4_K": 1}


def test_statistics_match_dequantize(gguf_file):
    _ckpt, tensors = _tensors(gguf_file)
    for t in gguf.GGUFReader(str(gguf_file)).tensors:
        ref = _reference(t).astype(np.float64)
        got = run(stats.compute(tensors[t.name]))
        assert got.numel == ref.size
        assert got.kind == ("float" if t.tensor_type.name in PLAIN else "quantized")
        assert got.min == ref.min() and got.max == ref.max()
        assert got.mean == pytest.approx(ref.mean(), rel=1e-9, abs=1e-12)
        assert got.std == pytest.approx(ref.std(), rel=1e-6)
        assert got.zeros == int((ref == 0).sum())


@pytest.mark.parametrize("chunk", [7, 100, 1000])
def test_chunks_cut_anywhere(gguf_file, chunk):
    """Pieces that cut blocks and rows anywhere still give every value once, in order."""
    _ckpt, tensors = _tensors(gguf_file)
    for t in gguf.GGUFReader(str(gguf_file)).tensors:
        info = tensors[t.name]
        parts = [v.copy() for v, _i in element_chunks(info, chunk)]
        assert np.array_equal(np.concatenate(parts), _reference(t).reshape(-1)), t.name
        first, count = 37, 301
        part = np.concatenate([v.copy() for v, _ in element_chunks(info, 50, first, count)])
        assert np.array_equal(part, _reference(t).reshape(-1)[first:first + count])


def test_values_heatmap_and_npy(gguf_file, tmp_path):
    _ckpt, tensors = _tensors(gguf_file)
    reader = {t.name: t for t in gguf.GGUFReader(str(gguf_file)).tensors}
    ref = _reference(reader["blk.1.ffn_down.weight"])
    info = tensors["blk.1.ffn_down.weight"]
    sl = TensorSlice(info, (1, 2), {0: 1})
    assert sl.shape == (3, 512)
    assert sl.value(2, 5) == pytest.approx(float(ref[1, 2, 5]))
    assert np.array_equal(sl.floats(0, 3, 0, 512), ref[1])
    hm = run(heatmap(info, (1, 2), {0: 1}, max_side=64))
    assert hm.image.shape == (3, 64)
    out = tmp_path / "q.npy"
    run(save_npy(info, str(out)))
    assert np.array_equal(np.load(out), ref)


def test_ggml_block_table_matches_gguf():
    """Every ggml type gguf knows: a plain dtype torch has, or a block type of ours with
    gguf's block sizes (a new ggml type fails here)."""
    plain = {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        if qtype.name in plain:
            continue
        assert dtypes.GGML_BLOCKS.get(qtype.name.lower()) == (block, size), qtype.name
        assert dtypes.get(qtype.name.lower()).block == (block, size)
    assert dtypes.stored_nbytes("q4_k", 512) == 288


@pytest.mark.parametrize("case", sorted(hostile(b"GGUF" + bytes(600))))
def test_hostile_headers_refused_quickly(gguf_file, tmp_path, case):
    path = tmp_path / "bad.gguf"
    path.write_bytes(hostile(gguf_file.read_bytes())[case])
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(path)
    assert time.perf_counter() - start < 5, case
    assert "GGUF" in str(err.value), str(err.value)


def test_split_part_opens_as_itself(gguf_file, tmp_path):
    part = tmp_path / "model-00001-of-00002.gguf"
    part.write_bytes(gguf_file.read_bytes())
    ckpt, tensors = _tensors(part)
    assert ckpt.format == "gguf" and len(tensors) == 7


def test_large_vocabulary_and_nested_arrays(tmp_path):
    """A tokenizer of 262k tokens reads in well under a second or two (gguf's own reader
    takes about 20 s and 900 MB); nested arrays still read."""
    path = tmp_path / "vocab.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_token_list([f"token{i}" for i in range(262_144)])
    w.add_array("tokenizer.ggml.token_type", [1] * 262_144)
    w.add_array("nested", [[1, 2], [3]])
    w.add_tensor("x", np.zeros(32, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    start = time.perf_counter()
    ckpt = open_checkpoint(path)
    assert time.perf_counter() - start < 5
    meta = ckpt.metadata
    assert meta["tokenizer.ggml.tokens"]["length"] == 262_144
    assert meta["tokenizer.ggml.tokens"]["first"][:2] == ["token0", "token1"]
    assert meta["tokenizer.ggml.token_type"] == {"length": 262_144, "type": "int32",
                                                 "first": [1] * 8}
    assert meta["nested"]["length"] == 2 and meta["nested"]["type"] == "array"


# -- a model split in several files (gguf-split) ------------------------------------------
@pytest.fixture(scope="module")
def split_folder(tmp_path_factory: pytest.TempPathFactory):
    return write_gguf_split(tmp_path_factory.mktemp("gguf-split") / "model")


def _split_reference(folder) -> dict[str, tuple[str, object]]:
    """Each tensor of the splits as gguf's reader gives it, with the split holding it."""
    return {t.name: (name, t) for name in SPLIT_NAMES
            for t in gguf.GGUFReader(str(folder / name)).tensors}


def test_split_folder_is_one_model(split_folder):
    ckpt, tensors = _tensors(split_folder)
    assert ckpt.format == "gguf" and scan(ckpt).verdict == "safe"
    ref = _split_reference(split_folder)
    assert list(tensors) == list(ref)  # the order of the splits, then of each split
    for key, (name, t) in ref.items():
        info = tensors[key]
        ggml = t.tensor_type.name
        assert info.file == name
        assert info.dtype == PLAIN.get(ggml, ggml.lower())
        assert info.shape == tuple(reversed(t.shape.tolist()))
        assert info.nbytes == t.n_bytes and info.problem is None
        got = np.concatenate([v.copy() for v, _i in element_chunks(info, 100)])
        assert np.array_equal(got, _reference(t).reshape(-1)), key
    assert [f["path"] for f in ckpt.files] == SPLIT_NAMES
    assert all(f["format"] == "gguf" for f in ckpt.files)
    assert ckpt.file_size == sum((split_folder / n).stat().st_size for n in SPLIT_NAMES)
    meta = ckpt.metadata
    assert meta["general.name"] == "tiny-split" and meta["splits"] == 3
    assert meta["split.count"] == 3 and meta["split.tensors.count"] == 5
    assert "split.no" not in meta
    assert meta["GGUF tensor types"] == {"F32": 2, "F16": 1, "Q8_0": 1, "Q4_K": 1}
    assert not ckpt.warnings and not ckpt.findings


def test_stats_of_a_quantized_tensor_in_a_split(split_folder):
    _ckpt, tensors = _tensors(split_folder)
    name, t = _split_reference(split_folder)["blk.0.attn_q.weight"]
    assert name == SPLIT_NAMES[1] and t.tensor_type.name == "Q8_0"
    ref = _reference(t).astype(np.float64)
    got = run(stats.compute(tensors["blk.0.attn_q.weight"]))
    assert got.kind == "quantized" and got.numel == ref.size == 320
    assert got.min == ref.min() and got.max == ref.max()
    assert got.mean == pytest.approx(ref.mean(), rel=1e-9, abs=1e-12)
    assert got.std == pytest.approx(ref.std(), rel=1e-6)


def test_one_split_alone_is_that_split(split_folder):
    ckpt, tensors = _tensors(split_folder / SPLIT_NAMES[1])
    assert ckpt.format == "gguf" and not ckpt.files
    assert list(tensors) == ["blk.0.attn_q.weight", "blk.0.attn_norm.weight"]
    assert ckpt.metadata["split.no"] == 1 and ckpt.metadata["split.count"] == 3


@pytest.mark.parametrize("gone", [1, 0])
def test_a_missing_split_is_damaged_and_named(split_folder, tmp_path, gone):
    folder = tmp_path / "partial"
    shutil.copytree(split_folder, folder)
    (folder / SPLIT_NAMES[gone]).unlink()
    ckpt, tensors = _tensors(folder)
    lost = SPLIT_NAMES[gone]
    assert tensors[lost].problem and lost in tensors[lost].problem
    assert tensors[lost].file == lost
    ok = [k for k, t in tensors.items() if t.problem is None]
    assert len(ok) == 3 and all(tensors[k].file != lost for k in ok)
    assert any(lost in w and "missing" in w and "2 of the model's 5 tensors" in w
               for w in ckpt.warnings), ckpt.warnings
    assert next(f for f in ckpt.files if f["path"] == lost)["problem"] == "missing"
    if gone == 0:  # the model's metadata was in it
        assert "general.name" not in ckpt.metadata
        assert any("first split" in w for w in ckpt.warnings)


def test_a_truncated_split_and_a_stray_one(split_folder, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(split_folder, folder)
    last = folder / SPLIT_NAMES[2]
    last.write_bytes(last.read_bytes()[:100])
    (folder / "other-00001-of-00002.gguf").write_bytes((split_folder / SPLIT_NAMES[1])
                                                      .read_bytes())
    ckpt, tensors = _tensors(folder)
    assert tensors[SPLIT_NAMES[2]].problem and len(tensors) == 5
    assert any(SPLIT_NAMES[2] in w and "cannot be read" in w for w in ckpt.warnings)
    assert scan(ckpt).verdict == "safe"  # a GGUF file holds no code, even unreadable
    assert any("other-00001-of-00002.gguf" in w for w in ckpt.warnings)


def test_a_split_that_disagrees_with_its_name(split_folder, tmp_path):
    folder = tmp_path / "swapped"
    shutil.copytree(split_folder, folder)
    a, b = folder / SPLIT_NAMES[1], folder / SPLIT_NAMES[2]
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    ckpt = open_any(folder)
    assert any(f.code == "split-mismatch" and f.file == SPLIT_NAMES[1]
               for f in ckpt.findings)


def _with_template(path, template):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_chat_template(template)
    w.add_tensor("w", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_chat_template_that_reaches_python_is_dangerous(tmp_path, marker):
    """CVE-2024-34359: llama-cpp-python < 0.2.72 rendered a GGUF's chat template with an
    unsandboxed Jinja environment; this template then runs a command. The file was 'safe'."""
    import subprocess
    import sys

    def payload(target):
        return ("{% for c in ''.__class__.__base__.__subclasses__() %}"
                "{% if c.__name__ == 'catch_warnings' %}"
                "{{ c()._module.__builtins__['__import__']('os').system('touch " + str(target)
                + "') }}{% endif %}{% endfor %}{{ messages }}")

    ran = tmp_path / "ran"
    proc = subprocess.run([sys.executable, "-c", "import sys, jinja2; jinja2.Environment()"
                           ".from_string(sys.argv[1]).render(messages=[])", payload(ran)],
                          capture_output=True, text=True, timeout=60)
    assert ran.exists(), ("the payload is live in an unsandboxed renderer", proc.stderr)
    path = _with_template(tmp_path / "chat.gguf", payload(marker))
    report = scan(open_checkpoint(str(path)))
    assert report.verdict == "dangerous"
    [finding] = [f for f in report.findings if f.code == "code-in-template"]
    assert finding.member == "tokenizer.chat_template" and "attribute '__" in finding.message


@pytest.mark.parametrize("template", [
    "{% for a in ['__init__'] %}{% for g in ['__globals__'] %}{{ cycler[a][g]['os']"
    ".popen('touch M').read() }}{% endfor %}{% endfor %}",
    "{% macro i() %}__init__{% endmacro %}{% macro g() %}__globals__{% endmacro %}"
    "{{ cycler[i()][g()]['os'].popen('touch M').read() }}",
    "{% set ns = namespace() %}{% set ns.i = '_' ~ '_' ~ 'init' ~ '_' ~ '_' %}"
    "{% set ns.g = '_' ~ '_' ~ 'globals' ~ '_' ~ '_' %}"
    "{{ cycler[ns.i][ns.g]['os'].popen('touch M').read() }}",
    "{{ ([1]|map('string')).gi_frame.f_builtins['exec'](\"import os; os.system('touch M')\")"
    " }}",
])
def test_templates_that_climb_without_a_dunder_run_and_are_dangerous(tmp_path, template):
    """An unsandboxed renderer runs both (the oracle); neither reads an attribute whose
    name starts with an underscore, so the scan had called both safe."""
    import subprocess
    import sys

    ran = tmp_path / "ran"
    subprocess.run([sys.executable, "-c", "import sys, jinja2; jinja2.Environment()"
                    ".from_string(sys.argv[1]).render(messages=[])",
                    template.replace("touch M", f"touch {ran}")],
                   capture_output=True, text=True, timeout=60)
    assert ran.exists(), "the payload is live in an unsandboxed renderer"
    marker = tmp_path / "marker"
    path = _with_template(tmp_path / "t.gguf", template.replace("touch M", f"touch {marker}"))
    report = scan(open_checkpoint(str(path)))
    assert report.verdict == "dangerous"
    assert not marker.exists()


@pytest.mark.parametrize("template", ["{{ " + "+".join(["1"] * 1000) + " }}",
                                      "{{ 1" + "1" * 5000 + " }}"])
def test_a_template_jinja_cannot_read_is_not_vouched_for(tmp_path, template):
    """Found by review: 1,000 terms parse, but walking them raised a RecursionError; an
    integer of 5,000 digits made Jinja's lexer raise ValueError (the file was unreadable)."""
    path = _with_template(tmp_path / "deep.gguf", template)
    report = scan(open_checkpoint(str(path)))
    assert report.verdict == "needs-trust"
    assert any(f.code == "unread-template" for f in report.findings)


def test_templates_that_hand_strings_around_as_real_ones_do_are_safe(tmp_path):
    """What the rules above must not catch: loops over literal names, macros given
    literals, underscores as text, a namespace's fields, lookups by a message's fields."""
    template = (
        "{%- macro render(m, role='user') -%}{{ '<|' ~ role ~ '|>' ~ m['content'] }}"
        "{%- endmacro -%}"
        "{%- set ns = namespace(found=false, sep='_') -%}"
        "{%- for key in ['role', 'content'] -%}{{ messages[0][key] if messages }}"
        "{%- endfor -%}"
        "{%- with name = 'tool_call' -%}{{ name | replace('_', ' ') }}{%- endwith -%}"
        "{%- for message in messages -%}{{ render(message, message.role) }}"
        "{%- if message.tool_calls is defined -%}{%- for call in message.tool_calls -%}"
        "{{ call.function.name ~ ns.sep ~ call.function.arguments | tojson }}"
        "{%- endfor -%}{%- endif -%}{%- endfor -%}"
        "{%- for i in range(messages|length) -%}{{ messages[i]['role'] }}"
        "{%- if not loop.last and messages[loop.index0 + 1].role == 'tool' %}, {% endif -%}"
        "{%- endfor -%}"
        "{%- set ref = tools[0]['$ref'] if tools else '#/a/b' -%}"
        "{%- for seg in ref[2:].split('/') -%}{{ tools[0][seg|replace('~1', '/')]"
        " if tools }}{%- endfor -%}"
        "{%- set weekday = {'Monday': 'Mon'}[strftime_now('%A')] if strftime_now is defined"
        " -%}"
        "{%- set xs = [] -%}{%- for m in messages -%}{%- set xs = xs + [render(m)] -%}"
        "{%- endfor -%}{%- for i in range(xs|length) -%}{{ xs[i] }}{%- endfor -%}"
        "{%- generation -%}{{ messages[-1]['content'] if messages }}{%- endgeneration -%}"
        "{{ '<|assistant|>' if add_generation_prompt }}")
    path = _with_template(tmp_path / "ok.gguf", template)
    report = scan(open_checkpoint(str(path)))
    assert report.verdict == "safe", report.findings


def test_real_chat_templates_are_safe(tmp_path):
    chatml = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
              "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if "
              "add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    tools = ("{%- set ns = namespace(system=false) %}{%- for tool in tools %}{{- tool | tojson }}"
             "{%- endfor %}{{ messages | selectattr('role', 'equalto', 'system') | "
             "map(attribute='content') | list }}{{ raise_exception('no') if not messages }}")
    for i, template in enumerate((chatml, tools)):
        path = _with_template(tmp_path / f"ok{i}.gguf", template)
        assert scan(open_checkpoint(str(path))).verdict == "safe"


@pytest.mark.parametrize("case", ["tensors", "key/values", "arrays of arrays"])
def test_headers_of_huge_counts_that_fit_the_file_are_refused_at_once(tmp_path, case):
    """Found by the fuzz round: counts the file's bytes can hold still made gguf's reader
    build an object each (500,000 tensors: 30 s and 2.8 GB; 1,000,000 empty sub-arrays:
    28 s and 2.3 GB)."""
    import struct

    if case == "tensors":
        raw = b"GGUF" + struct.pack("<IQQ", 3, 100_001, 0) + bytes(100_001 * 24)
    elif case == "key/values":
        raw = b"GGUF" + struct.pack("<IQQ", 3, 0, 65_537) + bytes(65_537 * 13)
    else:
        n = 70_000
        raw = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"a"
               + struct.pack("<IIQ", 9, 9, n) + struct.pack("<IQ", 0, 0) * n)
    path = tmp_path / "counts.gguf"
    path.write_bytes(raw)
    with pytest.raises(CheckpointError, match="ckpt-inspector reads"):  # the cap, not the size
        open_checkpoint(str(path))


@pytest.mark.parametrize("spelling", [
    '{{ "}}" ~ cycler.__init__.__globals__.os.popen("touch M").read() }}',
    "{%- set u = '_' -%}{%- set d = u ~ u -%}{{ namespace[d ~ 'init' ~ d] }}",
    "{{ ''['\\N{LOW LINE}' * 2 ~ 'class' ~ '\\N{LOW LINE}' * 2] }}",
    "{% set k = ('%' ~ 'c%' ~ 'c')|format(95, 95) %}{{ self[k ~ 'init' ~ k] }}",
    "{% set k = ['_', '_']|join %}{{ lipsum[k ~ 'globals' ~ k] }}",
    "{{ ''|attr(x) }}",
    "{{ messages|map(attribute=k)|list }}",
    # found by a later review: a name handed on by a loop, a macro, a with or a call
    # block, a keyword's name, and frames, reached without a single underscore
    "{% for a in ['__init__'] %}{{ cycler[a] }}{% endfor %}",
    "{% for a in ['_' ~ '_init__'] %}{{ cycler[a] }}{% endfor %}",
    "{% macro f(a) %}{{ cycler[a] }}{% endmacro %}{{ f('_' ~ '_init__') }}",
    "{% macro f(a='_' ~ '_init__') %}{{ cycler[a] }}{% endmacro %}{{ f() }}",
    "{% with a = '_' ~ '_init__' %}{{ cycler[a] }}{% endwith %}",
    "{% for a in dict(__init__=1) %}{{ cycler[a] }}{% endfor %}",
    "{% macro f() %}{{ caller('_' ~ '_init__') }}{% endmacro %}{% call(a) f() %}"
    "{{ cycler[a] }}{% endcall %}",
    "{{ ([1]|map('string')).gi_frame.f_builtins['exec']('import os') }}",
    "{% set g = [1]|select %}{{ g['gi_frame'] }}",
    # and by a further review, each run by an unsandboxed renderer: str.format's {:c},
    # ''.join, a repr's character, a namespace's attribute, macro, block and call block
    # output, a dotted attribute path, a recursive loop's argument, a character of a
    # literal
    "{{ cycler['{:c}{:c}init{:c}{:c}'.format(95,95,95,95)] }}",
    "{% set u = '{:c}'.format(95) %}{% set i = ''.join([u,u,'init',u,u]) %}{{ cycler[i] }}",
    "{% set u = '{}'.format(lipsum)[18] %}{{ cycler[''.join([u,u,'init',u,u])] }}",
    "{% set ns = namespace() %}{% set ns.i = '_' ~ '_' ~ 'init' ~ '_' ~ '_' %}"
    "{{ cycler[ns.i] }}",
    "{% with n = namespace() %}{% set n.i = '_' ~ '_init__' %}{{ cycler[n.i] }}{% endwith %}",
    "{% macro i() %}__init__{% endmacro %}{{ cycler[i()] }}",
    "{% block i %}__init__{% endblock %}{{ cycler[self.i()] }}",
    "{% macro m() %}{{ cycler[caller()] }}{% endmacro %}{% call m() %}__init__{% endcall %}",
    "{% for o in [[cycler]]|map(attribute='0.__init__.__globals__.os') %}{{ o }}{% endfor %}",
    "{% for g in [[cycler]]|groupby('0.__init__') %}{{ g }}{% endfor %}",
    "{% for p in [0] recursive %}{% if p == 0 %}{{ loop([['_' ~ '_init__']]) }}{% else %}"
    "{{ cycler[p[0]] }}{% endif %}{% endfor %}",
    "{{ (messages|map('string'))['gi{:c}frame'.format(95)] }}",
    "{% set u = 'a_b'[1] %}{{ cycler[[u, u, 'init', u, u]|join] }}",
    # and by a third: text filters of literals, an object's text, filters that hand back
    # an argument, aliases and containers a built name is put in, long chains, attr by name
    "{{ lipsum['x__globals__'|replace('x', '')] }}",
    "{% set u = ('a_b'|list)[1] %}{{ lipsum[[u, u, 'globals', u, u]|join] }}",
    "{% set u = ([1]|reverse|string)[5] %}{{ lipsum[[u, u, 'globals', u, u]|join] }}",
    "{{ lipsum[x|default('_' ~ '_globals__')] }}",
    "{{ lipsum['x'|int('_' ~ '_globals__')] }}",
    "{% set ns = namespace() %}{% set n2 = ns %}{% set n2.g = '_' ~ '_globals__' %}"
    "{{ lipsum[ns.g] }}",
    "{% set d = {} %}{% if d.update({'g': '_' ~ '_globals__'}) %}{% endif %}{{ lipsum[d.g] }}",
    "{% set l = [] %}{% if l.append('_' ~ '_globals__') %}{% endif %}{{ lipsum[l[0]] }}",
    "{% macro m(a) %}{{ lipsum[a] }}{% endmacro %}{% set f = m %}{{ f('_' ~ '_globals__') }}",
    "{% set ns = namespace() %}{% for i in range(12) %}"
    + "".join(f"{{% set ns.a{k} = ns.a{k - 1} %}}" for k in range(10, 0, -1))
    + "{% set ns.a0 = '_' ~ '_globals__' %}{% endfor %}{{ lipsum[ns.a10] }}",
    "{% set f = 'attr' %}{{ ([lipsum]|map(f, g)|first) }}",
])
def test_chat_templates_spelling_their_way_to_dunders_are_dangerous(tmp_path, spelling):
    """Found by review: a denylist of spellings missed each of these (a '}}' inside a
    string, an underscore from an escape, '%c', join); the template is now parsed."""
    path = _with_template(tmp_path / "t.gguf", "{{ bos_token }}" + spelling)
    assert scan(open_checkpoint(str(path))).verdict == "dangerous"


def test_a_chat_template_cut_by_a_nul_is_read_as_c_readers_read_it(tmp_path):
    """llama.cpp hands out the template as a C string: bytes after a NUL (here not even
    UTF-8) hid the payload before it behind '<not UTF-8>'."""
    import gguf

    path = tmp_path / "nul.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_key_value("tokenizer.chat_template",
                    b"{{ ''.__class__.__mro__ }}\x00\xff", gguf.GGUFValueType.STRING)
    w.add_tensor("w", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert scan(open_checkpoint(str(path))).verdict == "dangerous"
