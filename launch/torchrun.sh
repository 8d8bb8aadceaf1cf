#!/usr/bin/env bash
# Start codecloop on this node with torchrun: one process per GPU, NCCL between all processes of
# the job, and a c10d rendezvous with the other nodes. The arguments are codecloop's own.
#
# One node, all its GPUs:
#   bash launch/torchrun.sh train --config launch/configs/classification.yaml --data /data/imagenet --out runs/r50
# Four nodes of 8 GPUs: the same line on every node, with the same MASTER_ADDR (a host all nodes reach):
#   NNODES=4 MASTER_ADDR=node001 bash launch/torchrun.sh train ... --out runs/r50
# which runs, on each node,
#   python -m torch.distributed.run --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d \
#       --rdzv_endpoint node001:29500 --rdzv_id codecloop -m codecloop train ... --out runs/r50
#
# Settings (SLURM's variables are used when present; see launch/slurm/codecloop.sbatch):
#   NNODES          nodes in the job             default: $SLURM_NNODES, else 1
#   NPROC_PER_NODE  processes (GPUs) per node    default: $SLURM_GPUS_ON_NODE, else the GPUs nvidia-smi lists, else 1
#   MASTER_ADDR     rendezvous host              default: first host of $SLURM_JOB_NODELIST (required without SLURM)
#   MASTER_PORT     rendezvous port              default: 29500
#   RDZV_ID         id shared by the job's nodes default: $SLURM_JOB_ID, else codecloop
#   PYTHON          interpreter with codecloop   default: python
#   TORCH_ELASTIC_SHUTDOWN_TIMEOUT  seconds torchrun gives its processes to write a checkpoint and
#                   exit after forwarding them SIGTERM, before SIGKILL (default here: 100; torch
#                   releases without this setting wait 30)
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: [NNODES=N MASTER_ADDR=HOST] bash launch/torchrun.sh COMMAND [--key value ...]" >&2
    exit 2
fi

gpu_count() {
    local count=0
    if command -v nvidia-smi >/dev/null 2>&1; then
        count=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    fi
    echo $((count > 0 ? count : 1))
}

first_host() {
    if [ -z "${SLURM_JOB_NODELIST:-}" ]; then
        echo "launch/torchrun.sh: MASTER_ADDR: set it to a host every node reaches (the same on every node)" >&2
        exit 2
    fi
    scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1
}

NNODES=${NNODES:-${SLURM_NNODES:-1}}
NPROC_PER_NODE=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-$(gpu_count)}}
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${RDZV_ID:-${SLURM_JOB_ID:-codecloop}}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-100}

if [ "$NNODES" -eq 1 ]; then
    RENDEZVOUS=(--standalone)
else
    MASTER_ADDR=${MASTER_ADDR:-$(first_host)}
    [ -n "$MASTER_ADDR" ] || exit 2
    RENDEZVOUS=(--rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$RDZV_ID")
fi

exec "${PYTHON:-python}" -m torch.distributed.run --nnodes "$NNODES" --nproc_per_node "$NPROC_PER_NODE" \
    "${RENDEZVOUS[@]}" -m codecloop "$@"
