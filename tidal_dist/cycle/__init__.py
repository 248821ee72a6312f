"""The active-learning cycle: train -> evaluate -> score -> select -> label -> commit.

    lifecycle  how a command starts and ends: validate, write config, record the outcome
    plan       the pre-flight checks (`run --dry-run`), made before anything is written
    pool       the pool's ids, the validation hold-out, the initial labeled set
    loop       the cycles, committed atomically (`tidal-dist run`, `tidal-dist train`)
    score      per-candidate outputs, sharded across ranks, merged on rank 0
    parts      per-rank part files and their merge
    analysis   module-vs-classifier scores and KL sums for the report
    oracle     who labels the queries: the stored labels, or a person through a file

Imports training and every room below it; only sweep/ and cli.py import this room.
"""
