"""What is true of each format for ``torch.load``: which ones it reads (and how it tells a
zip archive's kind), why it cannot read the others and what does, and ``mmap=True``.
The wording shared by ``scan``, ``info --json`` and the window's torch.load box."""

from __future__ import annotations

TORCH_LOAD_FORMATS = ("torch-zip", "torch-legacy")
ZIP_FORMATS = ("torch-zip", "torchscript", "pt2")  # zips: torch.load decides by their records
NOT_WEIGHTS = {None, "hf-index", "text", "json"}  # a layout's index, config and marker files
# torch.load hands a path ending in .safetensors to safetensors.torch.load_file (torch
# 2.14.1 does, older torch does not; tests/core/test_torch_load_prediction.py checks it
# against the installed torch)
READS_SAFETENSORS_PATHS = True
SAFETENSORS_LOADER = "safetensors.torch.load_file(path, device='cpu')"
# what reads each format that torch.load does not (or not only)
LOADERS = {
    "safetensors": SAFETENSORS_LOADER,
    "torchscript": "torch.jit.load(path, map_location='cpu'): a TorchScript archive, whose "
                   "code runs when the model is called (only for a file you trust)",
    "pt2": "torch.export.load(path): an ExportedProgram archive (torch.export.save)",
    "onnx": "onnx.load(path), or onnxruntime.InferenceSession(path)",
    "gguf": "gguf.GGUFReader(path) (the gguf package), or llama.cpp",
    "pickle": "pickle.load, which runs whatever the file imports (only for a file you trust)",
    "npy": "numpy.load(path); an array of Python objects needs allow_pickle=True, which "
           "runs the pickle it holds (only for a file you trust)",
    "archive": "extract the archive: torch.load reads the checkpoint files inside it, "
               "one at a time",
    "dcp": "torch.distributed.checkpoint.load(state_dict, checkpoint_id=folder), or "
           "torch.distributed.checkpoint.format_utils.dcp_to_torch_save(folder, 'model.pt') "
           "for one torch.load file",
}
# a file compressed whole (its format is "archive", its container the compression)
COMPRESSED = ("gzip", "bzip2", "xz", "lzma", "zlib", "joblib-zfile")
COMPRESSED_LOADER = ("unpack it first (torch.load reads the file it holds), or joblib.load(path) "
                     "for a joblib file, pandas.read_pickle(path) for a compressed pickle: "
                     "they run the pickle it holds (only for a file you trust)")
NPZ_LOADER = ("numpy.load(path), each array by its name; an array of Python objects needs "
              "allow_pickle=True, which runs the pickle it holds (only for a file you trust)")
JOBLIB_LOADER = ("joblib.load(path), which reads the arrays after each wrapper and runs "
                 "whatever the file imports (only for a file you trust)")
# what reads a checkpoint of several torch.load files as a whole
LAYOUT_NOTES = {
    "hf-sharded": "transformers' from_pretrained(folder) reads all the shards",
    "deepspeed-zero": "deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint"
                      "(folder) merges the partitions into one state_dict",
}
OUTSIDE_ROOT = ("torch's zip reader refuses the archive: a record lies outside its root "
                "folder")
WHY_NOT = {
    "torchscript": "torch.load refuses a TorchScript archive with weights_only=True (with "
                   "weights_only=False it hands it to torch.jit.load)",
    "pt2": "an ExportedProgram archive has no data.pkl: torch.load cannot read it",
    "onnx": "an ONNX model is not a torch.save file: torch.load cannot read it",
    "gguf": "a GGUF file is not a torch.save file: torch.load cannot read it",
    "safetensors": "torch.load reads a safetensors file only by a path ending in "
                   ".safetensors (and only in recent torch)",
    "pickle": "a plain pickle, not a torch.save file: torch.load fails on it (invalid magic "
              "number)",
    "archive": "an archive of files, not one checkpoint: torch.load cannot read it",
    "npy": "a NumPy array file (numpy.save), not a torch.save file: torch.load cannot read it",
    "dcp": "a torch.distributed.checkpoint folder: its .distcp files are not torch.load files",
}


def loader_text(fmt: str, loads: bool) -> str | None:
    """What reads a file of this format (as torch.load takes it), when torch.load does
    not; ``loads``: torch.load reads it all the same."""
    if fmt in TORCH_LOAD_FORMATS:
        return None
    text = LOADERS.get(fmt)
    if fmt == "safetensors" and loads:
        return f"{text} (torch.load hands this path to it in recent torch only)"
    return text


def mmap_text(fmt: str) -> str | None:
    """What torch.load(path, mmap=True) does with a file of this format."""
    if fmt == "torch-zip":
        return "mmap=True works: a zip-format file, whose storages torch maps instead of reading"
    if fmt == "torch-legacy":
        return ("mmap=True fails: the legacy (non-zip) format cannot be memory-mapped; "
                "torch.save it again (zip format, the default since torch 1.6) to map it")
    if fmt == "safetensors":
        return "not torch.load's: safetensors.safe_open reads tensors lazily from the mapped file"
    return None
