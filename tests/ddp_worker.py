"""Run by test_training under `accelerate launch --num_processes 2`: trains the toy model and writes
each process's parameter sums, so the test can check that the processes stayed in sync."""

import json
import os
import sys

from latentgen.training import TrainConfig, Trainer
from tests.toy import ToyData, toy_model, toy_step


def main(out):
    model = toy_model()
    initial = [p.sum().item() for p in model.parameters()]
    cfg = TrainConfig(out=out, max_steps=6, batch_size=4, lr=1e-2, checkpoint_every=3, progress=False)
    t = Trainer(cfg, model, ToyData(), toy_step)
    model = t.fit()
    t.accelerator.wait_for_everyone()
    with open(os.path.join(out, f"params-{t.accelerator.process_index}.json"), "w") as f:
        json.dump({"world": t.accelerator.num_processes, "initial": initial,
                   "params": [p.sum().item() for p in model.parameters()]}, f)
    t.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
