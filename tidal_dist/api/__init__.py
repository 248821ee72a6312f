"""The Python API (docs/api.md): what a notebook needs, on the same code paths as the commands.

    from tidal_dist import api
    cfg = api.load_config("configs/fashion_mnist_demo.yaml", ["run.dir=runs/nb"])
    run = api.run_experiment(cfg)          # start or resume; Ctrl-C: checkpoint + KeyboardInterrupt
    run.cycles[-1].metrics["accuracy"]; run.cycle(0).queried_ids; run.cycle(0).td().stats
    model = api.load_model(run.dir)        # model.predict([PIL images]) -> classes, probabilities

Custom query strategies: subclass `Strategy` and decorate it with `register` (docs/api.md).
"""

from tidal_dist.api.experiment import execute, load_config, run_experiment, train_once
from tidal_dist.api.model import TrainedModel, load_model
from tidal_dist.api.runs import Cycle, Run
from tidal_dist.data.shards import prepare as prepare_dataset
from tidal_dist.job.errors import UserError
from tidal_dist.strategies.base import Outputs, ScoreContext, Strategy, register

__all__ = ["Cycle", "Outputs", "Run", "ScoreContext", "Strategy", "TrainedModel", "UserError",
           "execute", "load_config", "load_model", "prepare_dataset", "register", "run_experiment", "train_once"]
