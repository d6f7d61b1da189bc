#!/usr/bin/env bash
# Multi-node Dense-Face training with accelerate (DDP). Run the same command on every node:
#   NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=<node 0> GPUS_PER_NODE=8 \
#     infra/train-multinode.sh --pretrained /models/sd21 --data /data/t2i-dense-face --out /data/runs/df
# Every node reads the shards (shared storage or pipe:/fsspec URLs); the trainer splits them by
# node and by DataLoader worker, and only rank 0 writes checkpoints and TensorBoard logs.
set -euo pipefail
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
MASTER_PORT="${MASTER_PORT:-29500}"
MIXED_PRECISION="${MIXED_PRECISION:-bf16}"
cd "$(dirname "$0")/.."
exec .venv/bin/accelerate launch \
    --multi_gpu \
    --num_machines "$NNODES" \
    --machine_rank "$NODE_RANK" \
    --main_process_ip "$MASTER_ADDR" \
    --main_process_port "$MASTER_PORT" \
    --num_processes "$((NNODES * GPUS_PER_NODE))" \
    --mixed_precision "$MIXED_PRECISION" \
    -m denseface.cli train --mixed-precision "$MIXED_PRECISION" "$@"
