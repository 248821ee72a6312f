"""Training one cycle's network, and running it forward over a split.

    runtime     the Accelerator (DDP, DeepSpeed, CPU), precision, seeding, logging
    session     what a cycle's training needs, built once: accelerator, network, objective, reader
    train       one cycle's epochs: batches, the objective's loss, TD rows, checkpoints
    optim       the optimizer (sgd, adamw) and schedule (step, cosine, warm-up); train.freeze
    frozen_features  a frozen backbone's outputs, computed once per cycle (train.freeze=backbone)
    measure     the candidates' measured TD, evaluated during training (al.td_measure_every)
    checkpoint  the epoch checkpoint (weights_only), written atomically, resumed from `latest`
    inference   one pass of the network over streamed ids, no collectives inside
    evaluate    test accuracy, each test sample once on some rank
    pretrain    `tidal-dist pretrain`: SimCLR on the pool's images (no labels), one process,
                the backbone's weights for model.weights

Imports the rooms below it (job, config, data, dynamics, models, objectives, strategies,
telemetry); never the cycle, sweep or report rooms.
"""
