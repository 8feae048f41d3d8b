#!/usr/bin/env bash
# Runs masktas_jax on every worker of a Cloud TPU VM pod slice.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh \
#       --config=configs/small.py --workdir=gs://my-bucket/run1
#
# Environment: TPU_NAME, ZONE (required); PROJECT (optional); REPO_DIR, the
# checkout on the workers (default ~/masktas_jax, expanded on the worker);
# SETUP=1 installs the package and jax[tpu] on every worker before the run.
# Arguments go to `python -m masktas_jax.main` unchanged. No coordinator
# flags: JAX finds the other workers of a pod slice by itself.
set -euo pipefail

die() { echo "tpu_pod.sh: error: $*" >&2; exit 2; }

[[ -n "${TPU_NAME:-}" ]] || die "TPU_NAME is not set (the name of the pod slice)"
[[ -n "${ZONE:-}" ]] || die "ZONE is not set (the zone of the pod slice)"

workdir="" prev=""
for arg in "$@"; do
  case "$prev" in --workdir) workdir="$arg" ;; esac
  case "$arg" in --workdir=*) workdir="${arg#--workdir=}" ;; esac
  prev="$arg"
done
[[ -n "$workdir" ]] || die "--workdir is required (a gs:// path all workers can reach)"
if [[ "$workdir" != gs://* ]]; then
  echo "tpu_pod.sh: warning: --workdir=$workdir is not gs://; every worker must" \
       "see the same directory there (a shared filesystem), or checkpoints break" >&2
fi

# A leading ~/ must reach the worker unquoted so that its shell expands it.
default_dir='~/masktas_jax'
repo_dir="${REPO_DIR:-$default_dir}"
if [[ "$repo_dir" == "~/"* ]]; then
  remote_dir="~/$(printf %q "${repo_dir#\~/}")"
else
  remote_dir="$(printf %q "$repo_dir")"
fi

remote="cd $remote_dir"
if [[ "${SETUP:-0}" == 1 ]]; then
  remote+=" && python3 -m pip install -e . && python3 -m pip install -U 'jax[tpu]'"
fi
remote+=" && python3 -m masktas_jax.main$(printf ' %q' "$@")"

project=()
if [[ -n "${PROJECT:-}" ]]; then project=(--project="$PROJECT"); fi

# The ${a[@]+...} form keeps an empty array legal under set -u in bash 3 (macOS).
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${project[@]+"${project[@]}"} \
  --worker=all --command="$remote"
