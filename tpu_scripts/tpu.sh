#!/usr/bin/env bash
# Train jaxlm on a Cloud TPU VM slice with one host or many (v4, v5e, v5p, v6e): create the VM or
# a queued resource, install this checkout on every worker, copy data, start `jaxlm train` on all
# workers at once, follow a worker's log, stop training, delete. --dry-run prints the commands.
set -euo pipefail
PROG=tpu.sh
DRY_RUN=false
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

usage() {
  cat <<'USAGE'
usage: tpu_scripts/tpu.sh ACTION --name NAME --zone ZONE [options] [-- OVERRIDES...]

actions, in the order of a run:
  create   create the TPU VM, or with --queued a queued resource whose node is NAME
  status   describe the VM (or with --queued the queued resource: WAITING_FOR_RESOURCES, ACTIVE...)
  install  pack this checkout (tracked and new files, not .gitignored ones), copy it to every
           worker and install it there with jax[tpu] in a Python venv
  copy     copy --src (a file or folder, e.g. data) to every worker
  train    copy --config to every worker and start `jaxlm train CONFIG distributed.enabled=true
           OVERRIDES` on all of them in the background (log: ~/jaxlm-work/train.log on each)
  logs     follow the training log of one worker (--worker, default 0)
  stop     SIGTERM training on every worker (jaxlm saves a checkpoint), SIGKILL after --grace
  delete   delete the VM (or with --queued the queued resource and its VM)

options for every action:
  --name NAME          TPU VM name, also the queued resource's name (required)
  --zone ZONE          e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-a (v5p) (required)
  --project PROJECT    Google Cloud project (default: the one gcloud is configured with)
  --dry-run            print the commands, one per line, instead of running them
  -h, --help           this help

create:
  --type TYPE          accelerator type (required): v4-8, v4-32, v5litepod-16, v5p-8, v6e-8, ...
  --version VERSION    TPU software version (default by type: tpu-ubuntu2204-base for v4,
                       v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e)
  --spot               Spot capacity (cheaper, can be preempted)
  --reserved           use the project's reservation
  --queued             request a queued resource instead of creating the VM directly
  --valid-until D      with --queued: drop the request if not granted within D (e.g. 6h, 2d)
install:
  --python VERSION     Python for the workers' venv (default 3.12; the images have 3.10)
  --jax REQUIREMENT    pip requirement for JAX (default jax[tpu]; e.g. 'jax[tpu]==0.7.2')
copy:
  --src PATH           local file or folder to copy (required)
  --dest DIR           folder on the workers, relative to ~/jaxlm-work (default: the folder
                       PATH is in, so that data/x lands in ~/jaxlm-work/data/x)
train:
  --config CONFIG      a YAML file (copied to the workers) or a preset name (required)
  --env NAME=VALUE     environment variable for the training processes (repeatable)
  -- OVERRIDES         section.key=value overrides for `jaxlm train`
logs:
  --worker N           which worker's log (default 0)
stop:
  --grace SECONDS      how long to wait for the checkpoint before SIGKILL (default 300)
status, delete:
  --queued             the NAME is a queued resource
delete:
  --yes                do not ask for confirmation

On every worker: ~/jaxlm (the checkout, replaced by each install), ~/jaxlm-venv (Python, JAX,
jaxlm) and ~/jaxlm-work (where training runs: configs/, data/, runs/, train.log, train.pid).

example (a v4-32 slice, 4 hosts):
  tpu_scripts/tpu.sh create  --name lm --zone us-central2-b --type v4-32 --queued --spot
  tpu_scripts/tpu.sh status  --name lm --zone us-central2-b --queued
  tpu_scripts/tpu.sh install --name lm --zone us-central2-b
  tpu_scripts/tpu.sh train   --name lm --zone us-central2-b --config configs/gpt2-small.yaml \
                             -- train.steps=20000
  tpu_scripts/tpu.sh logs    --name lm --zone us-central2-b
  tpu_scripts/tpu.sh stop    --name lm --zone us-central2-b
  tpu_scripts/tpu.sh delete  --name lm --zone us-central2-b --queued
USAGE
}

# Where things live on every worker, relative to the home folder (where ssh starts).
REMOTE_CODE=jaxlm       # the checkout; install replaces it
REMOTE_VENV=jaxlm-venv  # Python with jax[tpu] and jaxlm
REMOTE_WORK=jaxlm-work  # training's working folder: configs/, data/, runs/, train.log, train.pid

action="" name="" zone="" project="" type="" version="" valid_until=""
spot=false reserved=false queued=false yes=false
python_version="3.12" jax_requirement="jax[tpu]" src="" dest="" config="" worker=0 grace=300
envs=() overrides=() given=()

while (($#)); do
  flag="$1" value="" inline=false
  if [[ "$flag" == --*=* ]]; then
    value="${flag#*=}" flag="${flag%%=*}" inline=true
  fi
  case "$flag" in
    -h | --help) usage; exit 0 ;;
    --dry-run | --spot | --reserved | --queued | --yes)
      $inline && usage_error "$flag takes no value"
      case "$flag" in
        --dry-run) DRY_RUN=true ;;
        --spot) spot=true ;;
        --reserved) reserved=true ;;
        --queued) queued=true ;;
        --yes) yes=true ;;
      esac
      ;;
    --name | --zone | --project | --type | --version | --valid-until | --python | --jax | \
      --src | --dest | --config | --env | --worker | --grace)
      if ! $inline; then
        need_value "$flag" "${2:-}"
        value="$2"
        shift
      fi
      need_value "$flag" "$value"
      case "$flag" in
        --name) name="$value" ;;
        --zone) zone="$value" ;;
        --project) project="$value" ;;
        --type) type="$value" ;;
        --version) version="$value" ;;
        --valid-until) valid_until="$value" ;;
        --python) python_version="$value" ;;
        --jax) jax_requirement="$value" ;;
        --src) src="$value" ;;
        --dest) dest="$value" ;;
        --config) config="$value" ;;
        --env) envs+=("$value") ;;
        --worker) worker="$value" ;;
        --grace) grace="$value" ;;
      esac
      ;;
    --)
      shift
      overrides=("$@")
      break
      ;;
    -*) usage_error "unknown flag '$1'" ;;
    *)
      [[ -z "$action" ]] || usage_error "unexpected argument '$1'"
      case "$1" in
        create | status | install | copy | train | logs | stop | delete) action="$1" ;;
        *) usage_error "unknown action '$1'" ;;
      esac
      ;;
  esac
  case "$flag" in
    --name | --zone | --project | --dry-run | --) ;;
    -*) given+=("$flag") ;;
  esac
  shift
done

# ---------------------------------------------------------------------------------------------
# Validation: every mistake is one line on stderr and exit status 2, before anything runs.

[[ -n "$action" ]] || usage_error "missing ACTION (create, status, install, copy, train, logs, stop, delete)"
[[ -n "$name" ]] || usage_error "missing --name"
[[ -n "$zone" ]] || usage_error "missing --zone"
[[ "$name" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  usage_error "--name '$name' must be lowercase letters, digits and hyphens, starting with a letter"

case "$action" in
  create) allowed="--type --version --spot --reserved --queued --valid-until" ;;
  status) allowed="--queued" ;;
  install) allowed="--python --jax" ;;
  copy) allowed="--src --dest" ;;
  train) allowed="--config --env" ;;
  logs) allowed="--worker" ;;
  stop) allowed="--grace" ;;
  delete) allowed="--queued --yes" ;;
esac
for flag in ${given[@]+"${given[@]}"}; do
  [[ " $allowed " == *" $flag "* ]] || usage_error "$flag does not apply to '$action'"
done
if ((${#overrides[@]})) && [[ "$action" != train ]]; then
  usage_error "overrides after -- only apply to 'train'"
fi

case "$action" in
  create)
    [[ -n "$type" ]] || usage_error "create needs --type (e.g. v4-32, v5litepod-16, v5p-8)"
    [[ "$type" =~ ^v[0-9][a-z0-9]*-[0-9]+$ ]] || usage_error "--type '$type' is not like v4-32"
    if [[ -z "$version" ]]; then
      case "$type" in
        v4-*) version=tpu-ubuntu2204-base ;;
        v5litepod-*) version=v2-alpha-tpuv5-lite ;;
        v5p-*) version=v2-alpha-tpuv5 ;;
        v6e-*) version=v2-alpha-tpuv6e ;;
        v5e-*) usage_error "v5e types are named v5litepod-N (e.g. v5litepod-16)" ;;
        *) usage_error "no default --version for type '$type'; pass --version" ;;
      esac
    fi
    if $spot && $reserved; then usage_error "--spot and --reserved exclude each other"; fi
    if [[ -n "$valid_until" ]]; then
      $queued || usage_error "--valid-until needs --queued"
      [[ "$valid_until" =~ ^([0-9]+[smhd])+$ ]] ||
        usage_error "--valid-until '$valid_until' is not a duration like 6h or 2d"
    fi
    ;;
  install)
    [[ "$python_version" =~ ^3\.[0-9]+$ ]] || usage_error "--python '$python_version' is not like 3.12"
    ;;
  copy)
    [[ -n "$src" ]] || usage_error "copy needs --src"
    if [[ "$src" == */ && "$src" != / ]]; then src="${src%/}"; fi
    dest="${dest%/}"
    [[ -e "$src" ]] || usage_error "--src not found: $src"
    if [[ -z "$dest" ]]; then
      if [[ "$src" == /* || "/$src/" == */../* ]]; then
        usage_error "--src '$src' is outside this folder: pass --dest"
      fi
      dest="$(dirname "$src")"
    fi
    ;;
  train)
    [[ -n "$config" ]] || usage_error "train needs --config (a YAML file or a preset name)"
    if [[ ! -f "$config" ]] && [[ "$config" == */* || "$config" == *.yaml || "$config" == *.yml ]]; then
      usage_error "config not found: $config"
    fi
    for env in ${envs[@]+"${envs[@]}"}; do
      [[ "$env" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage_error "--env '$env' is not NAME=VALUE"
    done
    for override in ${overrides[@]+"${overrides[@]}"}; do
      [[ "$override" =~ ^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+= ]] ||
        usage_error "override '$override' is not section.key=value"
    done
    ;;
  logs)
    [[ "$worker" =~ ^[0-9]+$ ]] || usage_error "--worker '$worker' is not a worker number"
    ;;
  stop)
    [[ "$grace" =~ ^[0-9]+$ ]] || usage_error "--grace '$grace' is not a number of seconds"
    ;;
esac

# ---------------------------------------------------------------------------------------------
# The commands.

location=(--zone="$zone")
if [[ -n "$project" ]]; then location+=(--project="$project"); fi

# on_workers WORKER STEP...: run shell steps (joined by "; ") on one worker or on all at once.
on_workers() {
  local worker="$1" command="" step
  shift
  for step in "$@"; do command+="${command:+; }$step"; done
  run gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" --worker="$worker" --command="$command"
}

# copy_to_workers [--recurse] SOURCE DESTINATION: copy to every worker.
copy_to_workers() {
  run gcloud compute tpus tpu-vm scp "$@" "${location[@]}" --worker=all
}

case "$action" in
  create)
    capacity=()
    if $spot; then capacity+=(--spot); fi
    if $reserved; then capacity+=(--reserved); fi
    if $queued; then
      if [[ -n "$valid_until" ]]; then capacity+=(--valid-until-duration="$valid_until"); fi
      run gcloud compute tpus queued-resources create "$name" "${location[@]}" --node-id="$name" \
        --accelerator-type="$type" --runtime-version="$version" ${capacity[@]+"${capacity[@]}"}
    else
      run gcloud compute tpus tpu-vm create "$name" "${location[@]}" \
        --accelerator-type="$type" --version="$version" ${capacity[@]+"${capacity[@]}"}
    fi
    ;;

  status)
    if $queued; then
      run gcloud compute tpus queued-resources describe "$name" "${location[@]}"
    else
      run gcloud compute tpus tpu-vm describe "$name" "${location[@]}"
    fi
    ;;

  install)
    archive="${TMPDIR:-/tmp}"
    archive="${archive%/}/jaxlm-$name.tar.gz"
    run bash "$here/pack.sh" "$archive"
    copy_to_workers "$archive" "$name:$REMOTE_CODE.tar.gz"
    run rm -f "$archive"
    # uv provides the Python the TPU images lack (they have 3.10; jaxlm needs 3.11+).
    uv=.local/bin/uv  # where `pip install --user` puts it
    steps=(
      "set -e"
      "rm -rf $REMOTE_CODE $REMOTE_VENV"
      "mkdir -p $REMOTE_CODE $REMOTE_WORK/configs"
      "tar -xzf $REMOTE_CODE.tar.gz -C $REMOTE_CODE"
      "rm $REMOTE_CODE.tar.gz"
      "python3 -m pip install --user --quiet --upgrade uv"
      "$uv venv --quiet --python $(quote "$python_version") $REMOTE_VENV"
      "$uv pip install --quiet --python $REMOTE_VENV/bin/python -e ./$REMOTE_CODE $(quote "$jax_requirement")"
      "$REMOTE_VENV/bin/jaxlm --help > /dev/null"
      "echo \"\$(hostname): jaxlm installed in ~/$REMOTE_VENV\""
    )
    on_workers all "${steps[@]}"
    ;;

  copy)
    if [[ "$dest" == /* ]]; then remote_dir="$dest"; else remote_dir="$REMOTE_WORK/$dest"; fi
    remote_dir="${remote_dir%/.}"
    on_workers all "mkdir -p $(quote "$remote_dir")"
    recurse=()
    if [[ -d "$src" ]]; then recurse=(--recurse); fi
    copy_to_workers ${recurse[@]+"${recurse[@]}"} "$src" "$name:$remote_dir/"
    ;;

  train)
    if [[ -f "$config" ]]; then
      remote_config="configs/$(basename "$config")"
      copy_to_workers "$config" "$name:$REMOTE_WORK/$remote_config"
    else
      remote_config="$config"  # a preset name: jaxlm resolves it on the workers
    fi
    # Unbuffered output so that `logs` shows lines as they are printed.
    launch="$(quote_all env PYTHONUNBUFFERED=1 ${envs[@]+"${envs[@]}"} "../$REMOTE_VENV/bin/jaxlm" \
      train "$remote_config" distributed.enabled=true ${overrides[@]+"${overrides[@]}"})"
    steps=(
      "cd $REMOTE_WORK || exit 1"
      "if [ -f train.pid ] && kill -0 \"\$(cat train.pid)\" 2>/dev/null; then echo \"\$(hostname): jaxlm is already running (pid \$(cat train.pid)); stop it first\" >&2; exit 1; fi"
      "nohup $launch > train.log 2>&1 < /dev/null & echo \$! > train.pid"
      "echo \"\$(hostname): training, pid \$(cat train.pid), log ~/$REMOTE_WORK/train.log\""
    )
    on_workers all "${steps[@]}"
    ;;

  logs)
    on_workers "$worker" "tail -n 100 -F $REMOTE_WORK/train.log"
    ;;

  stop)
    steps=(
      "cd $REMOTE_WORK 2>/dev/null && [ -f train.pid ] || { echo \"\$(hostname): not training\"; exit 0; }"
      "pid=\$(cat train.pid)"
      "if kill -TERM \"\$pid\" 2>/dev/null; then echo \"\$(hostname): SIGTERM sent to \$pid, waiting up to $grace s\"; i=0; while kill -0 \"\$pid\" 2>/dev/null && [ \"\$i\" -lt $grace ]; do sleep 1; i=\$((i + 1)); done; if kill -0 \"\$pid\" 2>/dev/null; then kill -KILL \"\$pid\"; echo \"\$(hostname): SIGKILL sent to \$pid\"; fi; fi"
      "rm -f train.pid"
    )
    on_workers all "${steps[@]}"
    ;;

  delete)
    confirm=()
    if $yes; then confirm=(--quiet); fi
    if $queued; then
      run gcloud compute tpus queued-resources delete "$name" "${location[@]}" --force \
        ${confirm[@]+"${confirm[@]}"}
    else
      run gcloud compute tpus tpu-vm delete "$name" "${location[@]}" ${confirm[@]+"${confirm[@]}"}
    fi
    ;;
esac
