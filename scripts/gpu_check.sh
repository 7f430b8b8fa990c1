#!/usr/bin/env bash
# Checks `--device cuda` on a machine with an NVIDIA GPU: indexes the same photos once on the
# CPU and once on the GPU, compares every embedding, and prints photos/s for both.
# Needs models/cuda/ (scripts/setup.sh --gpu) and the CUDA 13 + cuDNN 9 libraries, from the
# system or from the nvidia-* PyPI wheels (their lib folders are put on LD_LIBRARY_PATH here).
#   scripts/gpu_check.sh PHOTO_DIR [FACEDB_BINARY]
set -euo pipefail
photos=${1:?usage: gpu_check.sh PHOTO_DIR [FACEDB_BINARY]}
facedb=${2:-target/release/facedb}
nv=$(python3 - <<'PY' 2>/dev/null || true
import os, nvidia
print(":".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in sorted(os.listdir(p)) if os.path.isdir(os.path.join(p, d, "lib"))))
PY
)
export LD_LIBRARY_PATH="${nv}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Without the CPU build, the GPU build's own CPU provider is the CPU side of the comparison.
[ -f models/libonnxruntime.so.1.31.1 ] || export FACEDB_ORT_LIB=models/cuda/libonnxruntime.so.1.31.1
work=$(mktemp -d)
for dev in cpu cuda; do
  cp -r "$photos" "$work/$dev"
  "$facedb" --device "$dev" --json index "$work/$dev" >"$work/$dev.json"
done
python3 - "$work" <<'PY'
import json, sqlite3, struct, sys, math
work = sys.argv[1]
def load(dev):
    c = sqlite3.connect(f"{work}/{dev}/facedb.sqlite")
    rows = c.execute("""SELECT fi.path, f.idx, e.vector, f.x, f.y FROM embeddings e JOIN faces f ON f.id = e.face_id
                        JOIN files fi ON fi.image_id = f.image_id""").fetchall()
    return {(p, i): (struct.unpack(f"<{len(v)//4}f", v), x, y) for p, i, v, x, y in rows}
cpu, gpu = load("cpu"), load("cuda")
common = sorted(set(cpu) & set(gpu))
cos = [sum(a * b for a, b in zip(cpu[k][0], gpu[k][0])) for k in common]
box = [math.hypot(cpu[k][1] - gpu[k][1], cpu[k][2] - gpu[k][2]) for k in common]
print(f"faces: cpu {len(cpu)}, cuda {len(gpu)}, both {len(common)}")
if cos:
    print(f"embedding cosine cpu vs cuda: min {min(cos):.6f}, mean {sum(cos)/len(cos):.6f}; box corner shift max {max(box):.2f} px")
for dev in ("cpu", "cuda"):
    s = json.load(open(f"{work}/{dev}.json"))
    stages = ", ".join(f"{k} {v / max(s['counters']['images_new'], 1):.1f}" for k, v in s["counters"]["stage_ms"].items())
    print(f"{dev}: {s['new_photos_per_second']:.2f} photos/s ({s['seconds']:.1f} s); ms/photo summed over workers: {stages}")
PY
