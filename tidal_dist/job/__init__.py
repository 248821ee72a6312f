"""The job's life on a cluster: what every other room stands on.

    errors       UserError: a user's mistake, reported without a traceback (exit 2)
    fsutil       atomic writes (temp + fsync + rename), memmaps, disk-space errors
    distributed  rank / world size / launcher as pure functions of the environment
    preemption   stop signals -> one agreed checkpoint, loader workers that forward them
    faults       test hooks that kill or stop a process at a named point (TIDAL_FAULT)
    outcome      outcome.json (done, preempted, waiting for labels, bad input, failed), `status`
    rundir_lock  one launch per run dir: rank 0's flock on RUN_DIR/run.lock, freed by the kernel

This room imports nothing else from tidal_dist, so config.py and every folder may import it.
"""
