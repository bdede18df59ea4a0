# Environment of every job in slurm/*.sbatch: sourced by the batch script, inherited by srun's tasks.
# Placeholders are commented out; uncomment and set them for your cluster. A variable already set when
# you submit wins where the line says ${VAR:-default} (sbatch exports the submitting shell's environment).

# ---- code and Python ---------------------------------------------------------------------------------
# The repository; the batch scripts default it to the submission directory.
export M3_REPO="${M3_REPO:-$SLURM_SUBMIT_DIR}"
# A virtual environment to activate (e.g. M3_VENV=$HOME/m3/.venv sbatch ...); unset: `python` from PATH.
if [[ -n "${M3_VENV:-}" ]]; then
  source "$M3_VENV/bin/activate"
fi
# `python -m framework` and tools/ import from the checkout even when the package is not installed.
export PYTHONPATH="$M3_REPO${PYTHONPATH:+:$PYTHONPATH}"

# ---- ranks ------------------------------------------------------------------------------------------
# srun's tasks take rank, world size and rendezvous from SLURM_* (framework/parallel/env.py); RANK & co.
# exported in the submitting shell (sbatch passes its environment on) would override them for every task.
unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT

# ---- CPU threads -------------------------------------------------------------------------------------
# One task per GPU; each task's intra-op threads share the task's CPUs (--cpus-per-task).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
# Slurm 22.05-23.02's srun does not inherit the job's --cpus-per-task; pass it on explicitly.
if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then
  export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"
fi
# The data loader workers already run in parallel; tokenizers' own thread pool would oversubscribe.
export TOKENIZERS_PARALLELISM=false

# ---- NCCL (GPU collectives across nodes) -------------------------------------------------------------
# The network interface for NCCL's bootstrap and socket traffic (e.g. ib0, bond0, or ^lo,docker to exclude).
# export NCCL_SOCKET_IFNAME=ib0
# The same for gloo (CPU runs, and DeepSpeed's CPU-side groups).
# export GLOO_SOCKET_IFNAME=ib0
# InfiniBand: the adapters to use (e.g. mlx5_0,mlx5_1), or NCCL_IB_DISABLE=1 on Ethernet-only clusters.
# export NCCL_IB_HCA=mlx5
# export NCCL_IB_DISABLE=0
# GPUDirect RDMA level between NIC and GPU (site-specific; NCCL's topology detection usually gets it right).
# export NCCL_NET_GDR_LEVEL=PHB
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
# A rank that dies or hangs in a collective becomes an error on the others instead of a silent hang.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1

# ---- MLflow ------------------------------------------------------------------------------------------
# Where runs go when the config's tracking.uri is not set (default: sqlite next to output_dir).
# export MLFLOW_TRACKING_URI=http://mlflow.example.org:5000
# export MLFLOW_TRACKING_URI=sqlite:////shared/m3/mlflow.db
export MLFLOW_DISABLE_TELEMETRY=true
