# Topic 01's full profile on one GPU machine, in the order issue 19's numbers need (about 20 minutes on an H200:
# measured 2026-12-01, 15:48-16:07).
# From the repository root, on a machine that carries .whl (ci/gpu_image_wheels.py), .whl_01a and .whl_01b
# (ci/gpu_image_wheels.py --only triton01) and data/gpt2_bpe; start it detached so it outlives one device call:
#     source ci/gpu_image_env.sh .whl && source ci/gpu_triton_env.sh .whl_01a .whl_01b
#     python3 ci/gpu_job.py start full01 -- bash ci/gpu_full_01.sh ; python3 ci/gpu_job.py wait full01 540
# Each step writes its result into the stage folder the notebook reads (labkit.stage_dir); a step whose file is
# already there is skipped, so the job can be started again after a machine was lost. Stage files carried in as
# build/stages/01_triton_gptj_t5.full/ (gpu_image_env.sh copies them) count too: with the committed
# results/batch_bench_h200_*.json there as batch_bench.json, REDO=t5 (or REDO=gptj_batch,t5) re-measures only those parts.
set -u
export PYTHONUNBUFFERED=1
R=$PWD
ST="${LABKIT_STAGE_DIR:?source ci/gpu_image_env.sh first}/01_triton_gptj_t5.full"
mkdir -p "$ST"
cd "$R/notebooks/01_triton_gptj_t5" || exit 1
step() { local out="$1"; shift; if [ -s "$ST/$out" ]; then echo "[full01] $out: done before"; else
  echo "[full01] $out: $(date -u +%H:%M:%S) $*"; "$@"; echo "[full01] $out: rc=$? $(date -u +%H:%M:%S)"; fi; }
if [ -s "$ST/batch_bench.json" ]; then
  echo "[full01] batch_bench.json: done before (carried in or merged earlier; b1/bt not needed)"
else
  # 1. batch 1: fp16, HF eager, int8 weight-only (dequant, the Triton W8A16 kernel), int8 quality (about 5 min)
  step b1.json python3 ft_batch_bench.py --stage --parts gptj_b1 --int8 dequant,triton --out b1.json
  # 2. batch 16/64 GPT-J, T5-small and T5-base batches against HF (about 7 min)
  step bt.json python3 ft_batch_bench.py --stage --parts gptj_batch,t5 --t5-archs t5-small,t5-base --out bt.json
  step batch_bench.json python3 ft_batch_bench.py --stage --merge b1.json bt.json
fi
# 2b. REDO=<parts> (e.g. t5, or gptj_batch,t5): those parts again over an earlier batch_bench.json, which keeps its
#     other parts (issue 19: the T5 ratios were measured before the per-layer cache fix; the batches below the cache's
#     rows before the row-index write fix)
if [ -n "${REDO:-}" ]; then
  step redo.json python3 ft_batch_bench.py --stage --parts "$REDO" --t5-archs t5-small,t5-base --out redo.json
  step redo_merged.json python3 ft_batch_bench.py --stage --merge batch_bench.json redo.json --out redo_merged.json
  [ -s "$ST/redo_merged.json" ] && cp "$ST/redo_merged.json" "$ST/batch_bench.json"
fi
# 3. served: GPT-J-6B behind Triton under dynamic batching, 1/8/32 gRPC clients, beside the direct runtime
step served_gpu.json python3 ft_served_gpu.py --out "$ST/served_gpu.json" --max-batch-size 32 --clients 1,8,32
# 4. the whole notebook, full profile, loading the files above
cd "$R" && python3 ci/run_notebooks.py --nb 01 --profile full --device cuda
echo "[full01] notebook rc=$? $(date -u +%H:%M:%S)"
