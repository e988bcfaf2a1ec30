#!/usr/bin/env bash
# The GPU check, for a session that has one GPU (CI has none): a float32 parity run of the generator against the
# PyTorch reference, then the speed table (COCO-Stuff 256x256 and Cityscapes 256x512; float32 and bfloat16; train
# at batch 32, inference at batch 256; memory; MFU). At most about 10 minutes on an H100/H200; each part has its own
# time limit, and rows print as they are measured (progress on the log), so a part cut short keeps what it finished.
#
#   bash bench/device_check.sh            # output also in $OUT (or bench_out/): device_check.log
#
# It runs where the image has jax (CUDA), flax, optax, orbax, torch, absl-py and PyYAML but no grain, clu or
# ml_collections and no internet: nothing here imports grain or clu, and ml_collections (pure Python, for
# spade_jax.config) is installed from the wheel beside this script into a temporary folder.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench_out}
mkdir -p "$out"
log="$out/device_check.log"
: >"$log"
py=${PYTHON:-python3}
site=$(mktemp -d)
"$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" bench/wheels/*.whl || exit 1
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Time limits in seconds (override for a slower machine, or shrink for a CPU rehearsal with SPADE_CHECK_ARGS). On
# an H200 (2026-12-04) the parity part took about 70 s, and one dtype's speed rows did not finish in 280 s while the
# model FLOPs were counted by compiling on the GPU (now counted on the host CPU, see speed.py): 240 s each keeps the
# whole check inside a session's 15 device minutes with the machine's start.
T_PARITY=${T_PARITY:-90} T_SPEED=${T_SPEED:-240}
extra=${SPADE_CHECK_ARGS:-}

step() {  # step SECONDS TITLE COMMAND...: run with a time limit, log everything, say how it ended
  local limit=$1 title=$2
  shift 2
  echo "== $title" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log" | grep -E '^(\||jax )'
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "   ($title ended with exit code $rc$([ "$rc" = 124 ] && echo ': time limit'); see $log)" | tee -a "$log"
}

"$py" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" 2>&1 | tee -a "$log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$log"
step "$T_PARITY" "generator parity, float32 (JAX on the device vs torch float64)" \
  "$py" bench/generator_parity.py --batch=2 ${SPADE_PARITY_ARGS:-}
for dtype in bfloat16 float32; do
  step "$T_SPEED" "speed, $dtype" "$py" bench/speed.py --presets=coco_stuff,cityscapes --dtype="$dtype" --batch=32 \
    --infer_batch=256 --steps=3 $extra
done
echo "== done; full log: $log"
