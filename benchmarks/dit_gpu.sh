#!/usr/bin/env bash
# The GPU figures of benchmarks/dit.py in one call (about 6 minutes on one H100 / H200,
# most of it torch.compile): DiT-XL/2 as the DiT paper trains it (256 tokens, batch 64,
# 1000 classes) compiled and eager, then sora_edu's text-conditional spacetime DiT on
# 16 x 64 x 64 videos' latents (8 x 5 x 32 x 32 -> 1280 tokens) at B and XL.
# Usage: OUT=results bash benchmarks/dit_gpu.sh  (figures appended to $OUT/dit_gpu.jsonl)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__)"
run="python3 benchmarks/dit.py --device cuda --bf16 --warmup 3 --steps 10 --json $out/dit_gpu.jsonl"
$run --compile --sizes XL --batch 64 --latent 4 1 32 32 --condition class
$run --compile --sizes XL B --batch 16 --latent 8 5 32 32
$run --sizes XL --batch 64 --latent 4 1 32 32 --condition class
$run --sizes XL --batch 16 --latent 8 5 32 32
