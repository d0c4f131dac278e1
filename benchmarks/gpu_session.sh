#!/usr/bin/env bash
# Every figure the README's GPU table needs, in one command that ends within ~5 minutes on one GPU:
#
#   bash benchmarks/gpu_session.sh OUT_DIR
#
# 1. gpu_benchmark.py with 1024 px blocks beside the default 2048 (pure rate, native and default GSD,
#    ÷ pure, the per-crop loop, the canvas, fp16 against fp32);
# 2. the same end to end with --compile (native and default GSD only);
# 3. api_benchmark.py --repeat 5 (API ÷ direct on a canvas job; region labelling).
# Each step's JSON and output go to OUT_DIR; each step has its own time limit, so a slow step costs
# only itself; the tables are printed again at the end. Without a GPU it runs the CPU versions (tiny
# network), which checks the script itself.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_session.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    api_arch=ViT-B-16
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/card.txt" 2>&1
else
    api_arch=tiny-vit-16
    echo "no GPU: CPU versions" > "$out/card.txt"
fi
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$out/card.txt"

step() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "==> $name (at most ${limit} s)"
    timeout "$limit" "$@" > "$out/$name.txt" 2>&1
    echo "    exit $? ($name)" | tee -a "$out/$name.txt"
}

step gpu_benchmark 170 "$python" benchmarks/gpu_benchmark.py --blocks 1024 --json "$out/gpu_benchmark.json"
step gpu_benchmark_compile 100 "$python" benchmarks/gpu_benchmark.py --compile --skip loop,canvas,precision \
    --json "$out/gpu_benchmark_compile.json"
step api_benchmark 60 "$python" benchmarks/api_benchmark.py --repeat 5 --arch "$api_arch"

echo
cat "$out/card.txt"
for name in gpu_benchmark gpu_benchmark_compile; do
    echo "--- $name"
    sed -n '/^device /,$p' "$out/$name.txt"
done
echo "--- api_benchmark"
tail -n 6 "$out/api_benchmark.txt"
