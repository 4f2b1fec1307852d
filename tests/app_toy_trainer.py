"""A stand-in trainer for the app's job-manager tests: the shared loop on the toy regression.

Runs as ``python -m tests.app_toy_trainer --out DIR --max-steps N [--resume latest]`` like
every ``train/*.py``: metrics.jsonl, checkpoints and sample PNGs from the real loop, and a
``model_index.json`` in ``--out`` only when the run reached ``--max-steps``.
"""

import json
import os
import time

from PIL import Image

from latentgen.training import Trainer
from tests.toy import ToyData, toy_model, toy_step
from train import common


def main(argv=None):
    parser = common.base_parser("toy trainer for the app tests", needs_data=False)
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep in each step")
    args = parser.parse_args(argv)
    cfg = common.train_config(args, batch_size=8, lr=1e-2, checkpoint_every=5, log_every=1, progress=False)

    def step(model, batch, ctx):
        time.sleep(args.step_sleep)
        return toy_step(model, batch, ctx)

    def validate(trainer, model, step_no):
        shade = min(255, 20 * step_no)
        trainer.log_images("sample", Image.new("RGB", (16, 16), (shade, 0, 255 - shade)), step=step_no)
        return {}

    trainer = Trainer(
        cfg, toy_model(), ToyData(), step, validate_fn=validate, run_config={"step_sleep": args.step_sleep}
    )
    trainer.fit()
    if trainer.finished:
        with open(os.path.join(cfg.out, "model_index.json"), "w") as f:
            json.dump({"_class_name": "ToyModel"}, f)


if __name__ == "__main__":
    main()
