"""A stand-in trainer for the app's job-manager tests: the shared loop on the toy regression.

Runs as ``python -m tests.app_toy_trainer --out DIR --max-steps N [--resume latest]`` like every
``latentgen.train.<name>``: a config dataclass and ``run(cfg)``; metrics.jsonl, checkpoints and
sample PNGs from the real loop, and a ``model_index.json`` in ``--out`` only when the run reached
``--max-steps``.
"""

import json
import os
import time
from dataclasses import dataclass

from PIL import Image

from latentgen.train.config import RunConfig, main_for, opt
from latentgen.training import Trainer
from tests.toy import ToyData, toy_model, toy_step


@dataclass(frozen=True)
class ToyConfig(RunConfig):
    TRAINER = "toy"
    MAY_CHANGE = ("step_sleep",)

    batch_size: int = 8
    lr: float = 1e-2
    checkpoint_every: int = 5
    log_every: int = 1
    step_sleep: float = opt(0.0, "seconds to sleep in each step")


Config = ToyConfig


def run(cfg: ToyConfig) -> dict:
    def step(model, batch, ctx):
        time.sleep(cfg.step_sleep)
        return toy_step(model, batch, ctx)

    def validate(trainer, model, step_no):
        shade = min(255, 20 * step_no)
        trainer.log_images("sample", Image.new("RGB", (16, 16), (shade, 0, 255 - shade)), step=step_no)
        return {}

    trainer = Trainer(cfg.loop(), toy_model(), ToyData(), step, validate_fn=validate, run_config=cfg.record(),
                      may_change=cfg.may_change())
    trainer.fit()
    if trainer.finished:
        with open(os.path.join(cfg.out, "model_index.json"), "w") as f:
            json.dump({"_class_name": "ToyModel"}, f)
    return {"finished": trainer.finished, "step": trainer.step}


def main(argv=None) -> dict:
    return main_for(run, ToyConfig, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
