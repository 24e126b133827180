# Environment for mmtrain jobs; sourced by launch/slurm/*.sbatch. Every setting keeps a value you
# exported before submitting (sbatch passes your environment on), so override any of them there.

# One OpenMP/MKL thread per rank: each GPU has its own rank and the data loading runs in separate
# worker processes, so more threads only oversubscribe the node's cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# The tokenizers library warns and can deadlock when its thread pool meets forked DataLoader workers.
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}

# NCCL: when a rank dies, raise in the others instead of hanging in a collective until the watchdog
# (30 min); srun --kill-on-bad-exit then ends the step and SLURM can requeue it.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
# Log NCCL set-up problems (topology, InfiniBand), not every collective.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# Multi-node: if NCCL picks the wrong network, name it, e.g. NCCL_SOCKET_IFNAME=ib0 / NCCL_IB_HCA=mlx5.

# Compute nodes often cannot reach the Hugging Face hub: download models once on a login node
# (huggingface-cli download <id>) into HF_HOME on shared storage; set HF_HUB_OFFLINE=0 if they can.
export HF_HOME=${HF_HOME:-$HOME/.cache/huggingface}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
# Generated data and converted shards (paths.cache_dir): shared storage, built once, read by all jobs.
export MMTRAIN_CACHE=${MMTRAIN_CACHE:-$HOME/.cache/mmtrain}

# Slurm >= 22.05: srun no longer inherits --cpus-per-task from sbatch, so a task would get 1 core
# and its DataLoader workers would share it.
if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi
# sbatch passes the submitting shell's environment on; a WANDB_SERVICE from a Python session that
# used wandb would make every job attach its runs to that session's wandb service (and a requeued
# job then fails with "run ID ... is in use"). Each job starts its own.
unset WANDB_SERVICE
# Unbuffered output: the job log shows progress, and the last lines before a kill are not lost.
export PYTHONUNBUFFERED=1
# A hung or crashed rank prints its Python stack (also on `scancel --signal=...` of SIGABRT).
export PYTHONFAULTHANDLER=1
