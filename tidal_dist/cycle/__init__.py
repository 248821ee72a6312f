"""The active-learning cycle: train -> evaluate -> score -> select -> label -> commit.

    lifecycle  how a command starts and ends: validate, write config, record the outcome
    plan       the pre-flight checks (`run --dry-run`), made before anything is written
    pool       the pool's ids, the validation hold-out, the initial labeled set
    loop       the cycles, committed atomically (`tidal-dist run`, `tidal-dist train`)
    score      per-candidate outputs, sharded across ranks, merged on rank 0
    parts      per-rank part files and their merge
    analysis   module-vs-classifier scores and KL sums for the report
    oracle     who labels the queries: the stored labels, or a person (labels files, exports)
    initial    cycle 0's set: a seeded draw or TypiClust, labeled by a person first if one is the oracle
    queries    what a person labels: the queries with their images, predictions and scores
    label_studio  the Label Studio oracle: project, tasks (images by local files or URL),
                  predictions, annotations back; the open tasks `status` counts
    predict    `tidal-dist predict`: a committed cycle's model over the rest of the pool

Imports training and every room below it; only sweep/, report/, api/ and cli.py import this room.
"""
