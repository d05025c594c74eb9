#!/usr/bin/env bash
# Train a config on the local GPU(s) with the XLA settings recommended for H100-class training.
# One process drives every visible GPU; the config's mesh decides how the work is split.
set -euo pipefail
PROG=gpu_train.sh
DRY_RUN=false
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

usage() {
  cat <<'USAGE'
usage: tpu_scripts/gpu_train.sh [options] CONFIG [OVERRIDES...]

Runs `jaxlm train CONFIG OVERRIDES` (jaxlm from PATH: activate its environment first) with XLA
flags and memory settings for training on NVIDIA H100 GPUs. CONFIG is a YAML file or a preset
name; OVERRIDES are section.key=value.

options:
  --gpus LIST          GPUs to use, e.g. 0 or 0,1,2,3 (sets CUDA_VISIBLE_DEVICES; default all)
  --mem-fraction F     share of each GPU's memory XLA reserves up front (default 0.90, or
                       XLA_PYTHON_CLIENT_MEM_FRACTION when set; JAX's own default is 0.75)
  --dry-run            print the environment and the command instead of running them
  -h, --help           this help

Flags already in XLA_FLAGS come after these, so they win. Example:
  tpu_scripts/gpu_train.sh --gpus 0 configs/gpt2-small.yaml train.steps=5000
USAGE
}

gpus="" mem_fraction="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}" config="" overrides=()
while (($#)); do
  flag="$1" value="" inline=false
  if [[ "$flag" == --*=* ]]; then
    value="${flag#*=}" flag="${flag%%=*}" inline=true
  fi
  case "$flag" in
    -h | --help) usage; exit 0 ;;
    --dry-run)
      $inline && usage_error "$flag takes no value"
      DRY_RUN=true
      ;;
    --gpus | --mem-fraction)
      if ! $inline; then
        need_value "$flag" "${2:-}"
        value="$2"
        shift
      fi
      need_value "$flag" "$value"
      if [[ "$flag" == --gpus ]]; then gpus="$value"; else mem_fraction="$value"; fi
      ;;
    --)
      shift
      break
      ;;
    -*) usage_error "unknown flag '$1'" ;;
    *) break ;;
  esac
  shift
done
(($#)) || usage_error "missing CONFIG"
config="$1"
shift
overrides=("$@")

if [[ ! -f "$config" ]] && [[ "$config" == */* || "$config" == *.yaml || "$config" == *.yml ]]; then
  usage_error "config not found: $config"
fi
for override in ${overrides[@]+"${overrides[@]}"}; do
  [[ "$override" =~ ^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+= ]] ||
    usage_error "override '$override' is not section.key=value"
done
[[ -z "$gpus" || "$gpus" =~ ^[0-9]+(,[0-9]+)*$ ]] || usage_error "--gpus '$gpus' is not like 0,1"
[[ "$mem_fraction" =~ ^(0?\.[0-9]*[1-9][0-9]*|1|1\.0*)$ ]] ||
  usage_error "--mem-fraction '$mem_fraction' is not a number in (0, 1]"

# Each flag exists in current XLA (an unknown one aborts at start-up) and changes its default.
xla_flags=(
  # Overlap collectives (FSDP's all-gathers and reduce-scatters, the data-parallel gradient
  # all-reduce) with computation: XLA schedules them early and waits for them late.
  --xla_gpu_enable_latency_hiding_scheduler=true
  # Matmuls go to cuBLAS instead of Triton-generated kernels: for bf16 LLM matmuls on H100 cuBLAS
  # is as fast or faster, and compiling skips autotuning Triton tilings (NVIDIA's and MaxText's
  # GPU settings do the same).
  --xla_gpu_enable_triton_gemm=false
  # No CUDA graphs (command buffers): a training step is a few large kernels, so the launch
  # overhead graphs save is small, while graphs keep extra memory and have caused OOMs and hangs
  # with collectives (MaxText's GPU settings disable them too).
  --xla_gpu_enable_command_buffer=
  # The layers are one `nn.scan` loop: double buffering unrolls it by two so that the next
  # layer's FSDP all-gather overlaps the current layer's compute.
  --xla_gpu_enable_while_loop_double_buffering=true
  # Move each layer's parameter all-gather and gradient all-reduce across loop iterations so that
  # they overlap compute (reduce-scatter is pipelined by default).
  --xla_gpu_enable_pipelined_all_gather=true
  --xla_gpu_enable_pipelined_all_reduce=true
)

env_vars=(
  "XLA_FLAGS=${xla_flags[*]}${XLA_FLAGS:+ $XLA_FLAGS}"
  # Reserve this share of each GPU's memory up front; the rest is left to cuBLAS/cuDNN
  # workspaces and the CUDA context.
  "XLA_PYTHON_CLIENT_MEM_FRACTION=$mem_fraction"
  # One hardware work queue per GPU, so that kernels start in the order the latency-hiding
  # scheduler chose (NVIDIA's advice for Hopper; not for Blackwell, where it slows things down).
  "CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}"
)
if [[ -n "$gpus" ]]; then env_vars+=("CUDA_VISIBLE_DEVICES=$gpus"); fi
train_command=(jaxlm train "$config" ${overrides[@]+"${overrides[@]}"})

if $DRY_RUN; then
  for assignment in "${env_vars[@]}"; do
    echo "export ${assignment%%=*}=$(quote "${assignment#*=}")"
  done
  quote_all "${train_command[@]}"
  echo
  exit 0
fi
command -v jaxlm >/dev/null || die "jaxlm is not on PATH: activate the environment it is installed in"
for assignment in "${env_vars[@]}"; do
  export "${assignment?}"
done
exec "${train_command[@]}"
