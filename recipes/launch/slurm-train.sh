#!/bin/bash
# Train a txkit recipe on a SLURM cluster: one task per node, each starting `accelerate launch` for the
# node's 8 GPUs; then `txkit run` on one GPU averages the checkpoints, translates and scores the test
# sets and writes the model card. Submit from the repository root:
#
#   sbatch --nodes=1 recipes/launch/slurm-train.sh recipes/wmt14-en-de/transformer-base.yaml
#   sbatch --nodes=2 recipes/launch/slurm-train.sh recipes/wmt14-en-de/transformer-big.yaml \
#       --set train.max_tokens=1792          # 16 GPUs: half the batch per GPU keeps ~25000 tokens per step
#
# Environment (all optional): OUTPUT_DIR (default runs/<pair>/<model>), TXKIT_DATA (default ./data),
# GPUS_PER_NODE (8), LAUNCH_CONFIG (recipes/launch/1node-8gpu.yml or 2node-8gpu.yml by node count),
# MAIN_PORT (29500). SRUN=echo prints the commands instead of running them (a dry run, outside SLURM too).
#
# A preempted or failed job can simply be submitted again (or requeued): `txkit train --resume` continues
# from the latest complete checkpoint and `txkit run` skips the stages already done. The run directory
# and TXKIT_DATA must be on a filesystem every node sees.
#
#SBATCH --job-name=txkit-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --requeue

set -euo pipefail

RECIPE=${1:?usage: sbatch [--nodes=N] recipes/launch/slurm-train.sh RECIPE [--set key=value ...]}
shift
SRUN=${SRUN:-srun}
NODES=${SLURM_NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PROCESSES=$((NODES * GPUS_PER_NODE))
OUTPUT_DIR=${OUTPUT_DIR:-runs/$(basename "$(dirname "$RECIPE")")/$(basename "$RECIPE" .yaml)}
if [ -z "${LAUNCH_CONFIG:-}" ]; then
    if [ "$NODES" -eq 1 ]; then LAUNCH_CONFIG=recipes/launch/1node-8gpu.yml
    else LAUNCH_CONFIG=recipes/launch/2node-8gpu.yml; fi  # with --num_machines/--num_processes set below
fi
if [ -z "${MAIN_ADDR:-}" ]; then
    MAIN_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:?not inside a SLURM job: set MAIN_ADDR}" | head -n 1)
fi
MAIN_PORT=${MAIN_PORT:-29500}
export TXKIT_DATA=${TXKIT_DATA:-data}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

# The recipe's batch on this many processes: say it before hours of training, not after.
python - "$RECIPE" "$PROCESSES" "$@" <<'EOF'
import sys

from txkit.recipe import load_recipe

recipe, processes, rest = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
overrides = [rest[i + 1] for i, arg in enumerate(rest[:-1]) if arg == "--set"]
t = load_recipe(recipe, overrides).train
print(f"tokens per step: train.max_tokens {t.max_tokens} x train.accumulation {t.accumulation} x {processes} "
      f"processes = {t.max_tokens * t.accumulation * processes} (padding included; the paper: ~25000 real tokens)")
EOF

echo "training $RECIPE on $NODES node(s) x $GPUS_PER_NODE GPUs into $OUTPUT_DIR ($LAUNCH_CONFIG)"
# One task per node; each reads its own SLURM_NODEID, hence the single quotes.
$SRUN --nodes="$NODES" --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '
    accelerate launch --config_file "$0" --num_machines "$1" --num_processes "$2" \
        --machine_rank "${SLURM_NODEID:-0}" --main_process_ip "$3" --main_process_port "$4" \
        -m txkit train "${@:5}"
' "$LAUNCH_CONFIG" "$NODES" "$PROCESSES" "$MAIN_ADDR" "$MAIN_PORT" \
    "$RECIPE" --output-dir "$OUTPUT_DIR" --resume "$@"

# Averaging, test translations, scores, model card and report: one process on the first node.
$SRUN --nodes=1 --ntasks=1 txkit run "$RECIPE" --output-dir "$OUTPUT_DIR" "$@"
