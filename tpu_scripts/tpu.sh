#!/usr/bin/env bash
# Create a Cloud TPU VM, install jaxlm on every worker, train a config on all of them,
# follow the log, and delete the VM. Every action can be printed instead of run (--dry-run).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: tpu_scripts/tpu.sh [--dry-run] ACTION --name NAME --zone ZONE [options] [-- OVERRIDES...]

actions:
  create    create the TPU VM (--type, --version, --spot)
  install   copy this checkout to every worker and install it with jax[tpu]
  train     copy --config to every worker and start `jaxlm train` there in the background
  logs      follow the training log of worker 0
  delete    delete the TPU VM

options:
  --name NAME        TPU VM name (required)
  --zone ZONE        e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-a (v5p) (required)
  --type TYPE        accelerator type: v4-8, v5litepod-8, v5p-8, ... (default v4-8)
  --version VERSION  TPU software version (default: by type: tpu-ubuntu2204-base for v4,
                     v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p)
  --project PROJECT  Google Cloud project (default: gcloud's configured project)
  --spot             create a Spot (preemptible) VM
  --config FILE      config to train (train; default configs/demo.yaml)
  --dry-run          print the gcloud commands instead of running them
  -h, --help         this help

Anything after `--` is passed to `jaxlm train` as section.key=value overrides.
USAGE
}

dry_run=false action="" name="" zone="" type="v4-8" version="" project="" spot=false
config="configs/demo.yaml"
overrides=()
while (($#)); do
  case "$1" in
    --dry-run) dry_run=true ;;
    --name) name="$2"; shift ;;
    --zone) zone="$2"; shift ;;
    --type) type="$2"; shift ;;
    --version) version="$2"; shift ;;
    --project) project="$2"; shift ;;
    --spot) spot=true ;;
    --config) config="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    create|install|train|logs|delete) action="$1" ;;
    *) echo "tpu.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$action" ]] || { echo "tpu.sh: missing ACTION (see --help)" >&2; exit 2; }
[[ -n "$name" && -n "$zone" ]] || { echo "tpu.sh: --name and --zone are required" >&2; exit 2; }

if [[ -z "$version" ]]; then
  case "$type" in
    v4-*) version="tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    *) echo "tpu.sh: no default --version for type '$type'; pass --version" >&2; exit 2 ;;
  esac
fi

common=(--zone="$zone")
[[ -n "$project" ]] && common+=(--project="$project")

run() {
  if $dry_run; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

ssh_all() { run gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" --worker=all --command="$1"; }

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "$action" in
  create)
    args=(gcloud compute tpus tpu-vm create "$name" "${common[@]}"
          --accelerator-type="$type" --version="$version")
    $spot && args+=(--spot)
    run "${args[@]}"
    ;;
  install)
    archive="/tmp/jaxlm-$name.tar.gz"
    run git -C "$repo_root" archive --format=tar.gz --prefix=jaxlm/ -o "$archive" HEAD
    run gcloud compute tpus tpu-vm scp "$archive" "$name:~/jaxlm.tar.gz" "${common[@]}" --worker=all
    ssh_all "rm -rf ~/jaxlm && tar xzf ~/jaxlm.tar.gz -C ~ && python3 -m pip install -U 'jax[tpu]' && python3 -m pip install -e ~/jaxlm"
    ;;
  train)
    [[ -f "$config" ]] || { echo "tpu.sh: config not found: $config" >&2; exit 2; }
    run gcloud compute tpus tpu-vm scp "$config" "$name:~/jaxlm/run.yaml" "${common[@]}" --worker=all
    quoted=""
    for o in "${overrides[@]}"; do quoted+=" $(printf '%q' "$o")"; done
    ssh_all "cd ~/jaxlm && nohup python3 -m jaxlm train run.yaml${quoted} > ~/train.log 2>&1 &"
    ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" --worker=0 --command="tail -n 100 -f ~/train.log"
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$name" "${common[@]}" --quiet
    ;;
esac
