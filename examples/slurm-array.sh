#!/bin/bash
# Slurm array job: 8 tasks share one prompt file; task K makes the images whose
# global index is K mod 8. stipple reads SLURM_ARRAY_TASK_ID, _MIN and _COUNT
# itself. The union of the tasks' files is byte-identical to one unsharded run.
#SBATCH --job-name=stipple
#SBATCH --array=0-7
#SBATCH --cpus-per-task=16
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --output=logs/%A_%a.log
set -euo pipefail
srun stipple txt2img -m "${MODEL:-sd15.safetensors}" --from-file prompts.txt \
    --seed 1234 --steps 20 -o 'out/{index}-{seed}.png' \
    --skip-existing --json --threads "$SLURM_CPUS_PER_TASK" > "out/results-$SLURM_ARRAY_TASK_ID.jsonl"
