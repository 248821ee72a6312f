# Sourced by the launch/slurm/*.sbatch scripts after their srun returned.
# requeue_on_recorded_outcome PYTHON --config CONFIG [key=value ...]
# Reads the run's recorded outcome (`tidal-dist status`), requeues the job when it is "preempted"
# (75) and exits with the recorded code, so that sacct shows what happened:
#   0 done | 1 failed | 2 bad input | 3 waiting for labels | 4 no outcome recorded | 75 preempted
# 4 means the ranks died before they could record anything (SIGKILL after the grace period, out
# of memory, a lost node): not requeued here, because a crash that repeats would loop; SLURM
# requeues node failures by itself.
requeue_on_recorded_outcome() {
  local python="$1"
  shift
  "$python" -m tidal_dist status "$@"
  local status=$?
  case "$status" in
    75)
      echo "[$(date -Is)] preempted: requeueing job $SLURM_JOB_ID"
      scontrol requeue "$SLURM_JOB_ID" ;;
    0) echo "[$(date -Is)] done" ;;
    3) echo "[$(date -Is)] waiting for labels: add the labels file named above, then sbatch again" ;;
    4) echo "[$(date -Is)] no outcome recorded (killed before it could record one?): not requeued" ;;
    *) echo "[$(date -Is)] not requeued (status $status)" ;;
  esac
  exit "$status"
}
