"""Run by test_faults in a subprocess: trains the toy model, checkpointing every 3 steps, so the test
can SIGKILL it at any moment (``--hang-in-save`` stalls inside a checkpoint write to be killed there)
and then resume it."""

import argparse
import json
import os
import time

import torch

from latentgen.training import TrainConfig, Trainer
from tests.toy import ToyData, toy_model, toy_step


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument("--resume")
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--hang-in-save", type=int, default=0, help="stall inside the checkpoint write of this step")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = TrainConfig(out=args.out, max_steps=args.max_steps, batch_size=8, lr=1e-2, seed=5, checkpoint_every=3,
                      keep_checkpoints=2, ema_decay=0.9, progress=False, resume=args.resume)

    def step(model, batch, ctx):
        time.sleep(args.step_sleep)
        return toy_step(model, batch, ctx)

    t = Trainer(cfg, toy_model(), ToyData(), step)
    if args.hang_in_save:
        real = t.accelerator.save_state

        def save_state(path, **kw):
            out = real(path, **kw)
            if t.step == args.hang_in_save:
                open(os.path.join(args.out, "in-save"), "w").close()
                time.sleep(60)  # half-written: the weights are there, the state file is not
            return out

        t.accelerator.save_state = save_state
    model = t.fit()
    with open(os.path.join(args.out, "final.json"), "w") as f:
        json.dump([p.detach().flatten().tolist() for p in model.parameters()], f)


if __name__ == "__main__":
    main()
