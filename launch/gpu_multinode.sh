#!/usr/bin/env bash
# Starts one masktas_jax process on this node; run it once on every node.
#
#   srun --ntasks-per-node=1 launch/gpu_multinode.sh \
#       --config=configs/small.py --workdir=/shared/runs/run1
#
# Under SLURM the process id, process count and coordinator (first node of
# the step, port ${COORDINATOR_PORT:-12355}) come from the job. Elsewhere set
# COORDINATOR_ADDRESS=host:port (of process 0), NUM_PROCESSES and PROCESS_ID
# on each node. PYTHON overrides the interpreter. Arguments go to
# `python -m masktas_jax.main` unchanged.
set -euo pipefail

die() { echo "gpu_multinode.sh: error: $*" >&2; exit 2; }

if [[ -n "${SLURM_JOB_ID:-}" ]]; then
  [[ -n "${SLURM_NTASKS:-}" ]] || die "SLURM_NTASKS is not set (start this script with srun)"
  [[ -n "${SLURM_PROCID:-}" ]] || die "SLURM_PROCID is not set (start this script with srun)"
  nodelist="${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}}"
  [[ -n "$nodelist" ]] || die "SLURM_JOB_NODELIST is not set"
  hosts="$(scontrol show hostnames "$nodelist")" || die "scontrol cannot expand '$nodelist'"
  coordinator="${hosts%%$'\n'*}:${COORDINATOR_PORT:-12355}"
  num_processes="$SLURM_NTASKS"
  process_id="$SLURM_PROCID"
  # JAX pins each SLURM task to GPU $SLURM_LOCALID. With one task per node
  # that task should drive all of the node's GPUs, so hide the local id.
  if [[ "$num_processes" == "${SLURM_STEP_NUM_NODES:-${SLURM_NNODES:-}}" ]]; then
    unset SLURM_LOCALID
  fi
else
  if [[ -z "${NUM_PROCESSES:-}" && -n "${COORDINATOR_ADDRESS:-}${PROCESS_ID:-}" ]]; then
    die "NUM_PROCESSES is not set"
  fi
  num_processes="${NUM_PROCESSES:-1}"
  coordinator="${COORDINATOR_ADDRESS:-}"
  process_id="${PROCESS_ID:-0}"
  [[ "$num_processes" =~ ^[1-9][0-9]*$ ]] \
    || die "NUM_PROCESSES must be a positive integer, got '$num_processes'"
  if ((num_processes > 1)); then
    [[ -n "$coordinator" ]] || die "COORDINATOR_ADDRESS is not set (host:port of process 0)"
    [[ -n "${PROCESS_ID:-}" ]] || die "PROCESS_ID is not set (0..$((num_processes - 1)))"
    [[ "$coordinator" == *:* ]] \
      || die "COORDINATOR_ADDRESS must be host:port, got '$coordinator'"
  fi
fi

# Triton GEMM fusions off, as mode=compile has them (masktas_jax/stages/compile.py
# says why it must), so that a run compiles the programs whose memory
# mode=compile reported; cuBLAS runs the matmuls. With a GPU, XLA's
# autotuner would likely drop the Triton tilings that fail and compile with
# Triton on (not yet tried on a GPU): XLA_FLAGS=--xla_gpu_enable_triton_gemm=true
# tries it, since flags given in XLA_FLAGS come after this one and win.
export XLA_FLAGS="--xla_gpu_enable_triton_gemm=false${XLA_FLAGS:+ $XLA_FLAGS}"

python="${PYTHON:-python}"
if [[ "$num_processes" == 1 ]]; then
  echo "gpu_multinode.sh: single process on $(hostname)" >&2
  exec "$python" -m masktas_jax.main "$@"
fi
echo "gpu_multinode.sh: process $process_id of $num_processes on $(hostname)," \
     "coordinator $coordinator" >&2
exec "$python" -m masktas_jax.main --coordinator_address="$coordinator" \
  --num_processes="$num_processes" --process_id="$process_id" "$@"
