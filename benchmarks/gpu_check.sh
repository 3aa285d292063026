#!/usr/bin/env bash
# What needs a GPU, checked on a machine that has one (run from the repository root):
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# A checkpoint saved from CUDA tensors is listed, loaded onto cuda:0 and cpu (map_location),
# described with statistics computed on the GPU and on the CPU (compared), and exported to a
# state_dict that is verified. Output: OUT_DIR/gpu_check.txt (and the JSON of each step).
set -u
OUT=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export DEV=${DEVICE:-cuda:0}   # DEVICE=cpu tries the script on a machine without a GPU
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
CLI="$PY -m ckpt_inspector"
LOG="$OUT/gpu_check.txt"
step() { echo "== $*" | tee -a "$LOG"; }
run() { echo "\$ $*" >> "$LOG"; "$@" >> "$LOG" 2>&1; echo "rc=$?" | tee -a "$LOG"; }

step "environment"
run nvidia-smi --query-gpu=name,memory.total --format=csv
run $PY -c "import sys, torch, numpy; print(sys.version.split()[0], 'torch', torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
run $PY -c "import ml_dtypes, safetensors; print('ml_dtypes', ml_dtypes.__version__, 'safetensors', safetensors.__version__)"

step "devices"
run $CLI devices --json

step "a checkpoint saved from $DEV (real CUDA storages)"
run $PY - "$OUT" <<'EOF'
import sys, torch
torch.manual_seed(0)
import os
d = os.environ["DEV"]
sd = {"w": torch.randn(2048, 1024, device=d) * 0.02 + 0.5, "b": torch.randn(1024, device=d),
      "h": torch.randn(512, 512, device=d).half(), "bf": torch.randn(300, 7, device=d).bfloat16(),
      "i": torch.randint(-5, 9, (1000,), device=d), "big": torch.randn(64 * 1024 * 1024, device=d)}
sd["w"][3, 5] = float("nan")
torch.save(sd, f"{sys.argv[1]}/saved_on_cuda.pt")
print("saved", {k: (str(v.device), v.dtype) for k, v in sd.items()})
EOF
F="$OUT/saved_on_cuda.pt"

step "info (no torch import; the device recorded in the file)"
run $CLI info "$F"

step "load with torch onto cuda:0 and onto cpu"
run $CLI load "$F" --device "$DEV" --json
run $CLI load "$F" --device cpu --json

step "statistics on cuda:0 vs numpy on the cpu, and against torch"
run $CLI stats "$F" --device "$DEV" --bins 20 --json
cp "$LOG" "$OUT/partial.txt"
run $PY - "$F" <<'EOF'
import json, math, subprocess, sys, time
f = sys.argv[1]
def stats(dev):
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "ckpt_inspector", "stats", f, "--device", dev,
                          "--json"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["tensors"], time.perf_counter() - t
import os
gpu, tg = stats(os.environ["DEV"])
cpu, tc = stats("cpu")
import torch
ref = torch.load(f, map_location="cpu", weights_only=True)
bad = 0
for k, g in gpu.items():
    c = cpu[k]
    x = ref[k].double()
    x = x[torch.isfinite(x)]
    for name, want in (("mean", float(x.mean())), ("std", float(x.std(unbiased=False))),
                       ("min", float(x.min())), ("max", float(x.max()))):
        for dev, got in (("cuda", g[name]), ("cpu", c[name])):
            if not math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
                bad += 1
                print("MISMATCH", k, name, dev, got, want)
    print(k, "device", g["device"], "nan", g["nan"], c["nan"], "std", g["std"], c["std"],
          "seconds", round(g["seconds"], 4), round(c["seconds"], 4))
print("mismatches", bad, "process seconds: cuda", round(tg, 2), "cpu", round(tc, 2))
EOF

step "export the GPU-saved file to a state_dict on cpu, and to cuda:0, verified by torch"
run $CLI export "$F" --to state_dict -o "$OUT/cpu_copy.pt" --json
run $CLI export "$F" --to safetensors -o "$OUT/copy.safetensors" --json
run $CLI export "$F" --to state_dict -o "$OUT/cuda_copy.pt" --device "$DEV" --json
run $PY - "$OUT" <<'EOF'
import sys, torch
o = sys.argv[1]
a = torch.load(f"{o}/saved_on_cuda.pt", map_location="cpu", weights_only=True)
for name in ("cpu_copy.pt", "cuda_copy.pt"):
    b = torch.load(f"{o}/{name}", weights_only=True)
    same = all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a if k != "w") and \
        torch.equal(a["w"].nan_to_num(), b["w"].cpu().nan_to_num())
    print(name, "devices", sorted({str(v.device) for v in b.values()}), "bit-exact", same)
EOF
rm -f "$OUT"/*.pt "$OUT"/*.safetensors "$OUT/partial.txt"
step "done"
