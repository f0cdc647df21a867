#!/usr/bin/env bash
# Issue 12's CUDA checks in one go, for a lent GPU whose time is short (run from the repository root):
#   1. the device-aware tests on the GPU (pytest --device cuda runs only those),
#   2. the benchmark table on the GPU: the plain reference (benchmarks/reference.py) against the engine,
#   3. the paper config's Table-1 LeNetZhu cells (config/paper.yaml: 100 CIFAR-10 test images, untrained LeNetZhu;
#      "ours" 4,800 signed-Adam iterations, DLG 500 L-BFGS steps), each one batched call, timed.
# Offline, the cells read the CIFAR-10 test split from the image-folder archive given as $1 (the JPEG copy: the
# images are slightly lossy, and an image folder lists them class by class, so test images 0-99 are the first
# 100 airplanes, not torchvision's first 100). Everything is written to $2 as well as printed.
#   bash benchmarks/cuda_check.sh cifar10-jpeg.tar.gz out/
set -u -o pipefail
archive=${1:?the CIFAR-10 image-folder archive (cifar10-jpeg.tar.gz)}
out=${2:?an output folder}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH=src:scripts${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())" |
    tee -a "$out/gpu.txt"

timeout "${TESTS_S:-150}" "$python" -m pytest -q -p no:cacheprovider --device cuda tests/test_attack.py \
    tests/test_persample.py tests/test_handwritten.py tests/test_lbfgs.py tests/test_engine.py tests/test_federated.py 2>&1 | tee "$out/tests.txt"

data=$(mktemp -d)
tar -xzf "$archive" -C "$data" cifar10-jpeg/test
cat >"$data/offline.yaml" <<YAML
data:
  val: {CIFAR10: "image-folder:$data/cifar10-jpeg"}
  download: false
YAML
for cell in LeNetZhu_untrained_ours LeNetZhu_untrained_zhu; do
    start=$(date +%s.%N)
    timeout "${CELL_S:-240}" "$python" scripts/attack_cell.py --config config/paper.yaml "$data/offline.yaml" \
        --experiment table1 --cell "$cell" --out "$data/$cell" >"$out/$cell.log" 2>&1
    status=$?
    "$python" - "$data/$cell" "$cell" "$start" "$(date +%s.%N)" "$status" <<'PY' | tee -a "$out/cells.txt"
import json, statistics, sys
from pathlib import Path
folder, cell, start, end, status = sys.argv[1:]
seconds = float(end) - float(start)
psnr = [json.loads(p.read_text())["psnr"] for p in Path(folder).glob("*.json")]
mean = statistics.mean(psnr) if psnr else float("nan")
print(f"{cell}: exit {status}, {seconds:.1f} s wall (process start to end), {len(psnr)} images, "
      f"mean PSNR {mean:.2f} dB")
PY
done

timeout "${BENCH_S:-300}" "$python" benchmarks/bench.py --device cuda --resnet --threads 4 --repeats 3 2>&1 |
    tee "$out/bench.txt"
