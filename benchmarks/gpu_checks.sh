#!/usr/bin/env bash
# The GPU checks and benchmarks of jaxlm in one run, on a machine with an NVIDIA GPU and JAX
# with CUDA: the cuDNN attention tests, the train step of each size (tokens/s, MFU, step time,
# memory, compile time) under the launcher's XLA flags, batch-1 and batch-8 decoding latency,
# and a summary table and tokens/s-against-size plot for benchmarks/RESULTS.md.
set -euo pipefail
PROG=gpu_checks.sh
DRY_RUN=false
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=../tpu_scripts/lib.sh
source "$repo/tpu_scripts/lib.sh"

usage() {
  cat <<'USAGE'
usage: benchmarks/gpu_checks.sh [options] OUTDIR

Runs from a checkout (no install needed) with the Python in $PYTHON (default python3), which must
have jax with CUDA, flax, optax, orbax-checkpoint, chex, sentencepiece, safetensors and pyyaml.
Pure-Python dependencies missing there (omegaconf) are taken from build/offline-deps when it
exists: `make offline-deps` fills it on a machine with a package index.

options:
  --sizes LIST     configs of the size sweep, space-separated; the first is also decoded
                   (default "gpt2-small gpt2-medium gpt2-large")
  --seq-len N      training sequence length (default 1024)
  --batch N        training batch size (default 16)
  --sweep-remat P  remat policy of the sizes after the first, which run without remat
                   (default dots_no_batch: GPT-2 medium and large need it to fit in 80 GB)
  --steps N        timed train steps per size (default 30)
  --allow-cpu      run without a GPU (to try the script itself on a small config)
  -h, --help       this help

Writes into OUTDIR: environment.txt, tests.txt, train-CONFIG.json per size, decode.json,
summary.md and sizes.png.
USAGE
}

sizes="gpt2-small gpt2-medium gpt2-large" seq_len=1024 batch=16 steps=30 allow_cpu=false out=""
sweep_remat=dots_no_batch
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --allow-cpu) allow_cpu=true ;;
    --sizes | --seq-len | --batch | --steps | --sweep-remat)
      need_value "$1" "${2:-}"
      case "$1" in
        --sweep-remat) sweep_remat="$2" ;;
        --sizes) sizes="$2" ;;
        --seq-len) seq_len="$2" ;;
        --batch) batch="$2" ;;
        --steps) steps="$2" ;;
      esac
      shift
      ;;
    -*) usage_error "unknown flag '$1'" ;;
    *)
      [[ -z "$out" ]] || usage_error "one OUTDIR only"
      out="$1"
      ;;
  esac
  shift
done
[[ -n "$out" ]] || usage_error "missing OUTDIR"
for number in "$seq_len" "$batch" "$steps"; do
  [[ "$number" =~ ^[1-9][0-9]*$ ]] || usage_error "'$number' is not a positive integer"
done
[[ -n "${sizes// /}" ]] || usage_error "--sizes is empty"

python="${PYTHON:-python3}"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
[[ -d "$repo/build/offline-deps" ]] && PYTHONPATH="$PYTHONPATH:$repo/build/offline-deps"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
mkdir -p "$out"
cd "$repo"

platform="$("$python" -c 'import jax; print(jax.default_backend())')" ||
  die "$python cannot import jax"
if [[ "$platform" != gpu ]] && ! $allow_cpu; then
  die "JAX runs on '$platform', not a GPU (--allow-cpu to run anyway)"
fi
"$python" -c 'import omegaconf' 2>/dev/null ||
  die "omegaconf is missing: run \`make offline-deps\` where pip can reach a package index"

# The launcher's XLA flags and memory settings, exactly as `tpu_scripts/gpu_train.sh` sets them.
first="${sizes%% *}"
eval "$(tpu_scripts/gpu_train.sh --dry-run "$first" | grep '^export ')"

{
  date -u '+%Y-%m-%d %H:%M UTC'
  nvidia-smi 2>/dev/null || echo "nvidia-smi: not available"
  "$python" -c 'import jax, jaxlib, flax, optax; print("python", __import__("sys").version.split()[0],
"jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__,
"optax", optax.__version__); print(jax.devices())'
  echo "XLA_FLAGS=$XLA_FLAGS"
} >"$out/environment.txt" 2>&1

echo "== tests (cuDNN attention)"
status=0
"$python" -m pytest -q -p no:cacheprovider tests/test_gpu.py -rs 2>&1 | tee "$out/tests.txt" || status=1

# The first size's steps are also traced; its report lists the costliest operations (the trace
# itself stays in a scratch folder: it is large, and nested too deep to travel back).
traces="$(mktemp -d)"
trap 'rm -rf "$traces"' EXIT
profile=(--profile "$traces/$first")
remat=none
for config in $sizes; do
  echo "== train step: $config (remat $remat)"
  "$python" -m jaxlm bench "$config" model.dtype=bfloat16 model.attention_backend=auto \
    "model.remat_policy=$remat" "data.seq_len=$seq_len" "data.batch_size=$batch" \
    --steps "$steps" --json "$out/train-$config.json" "${profile[@]}" || status=1
  remat="$sweep_remat"
  profile=()
done

echo "== decoding: $first"
"$python" -m jaxlm bench "$first" model.dtype=bfloat16 model.param_dtype=bfloat16 \
  model.attention_backend=auto --decode --batch-sizes 1,8 --json "$out/decode.json" || status=1

"$python" benchmarks/summarize.py "$out" | tee "$out/summary.md" || status=1
exit "$status"
