"""Run by test_faults in a subprocess: trains the toy model, checkpointing every 3 steps, so the test
can SIGKILL it at any moment (``--hang-in-save`` stalls inside a checkpoint write to be killed there,
``--kill-at-publish`` kills it as a finished checkpoint is renamed into place), fill its disk
(``--file-size-limit``: RLIMIT_FSIZE, so writes past that size fail with EFBIG as on a full disk) and
then resume it."""

import argparse
import json
import os
import resource
import signal
import sys
import time

import torch

from latentgen import checkpoint
from latentgen.training import TrainConfig, Trainer
from tests.toy import ToyData, toy_model, toy_step


def limit_file_size(nbytes: int):
    """From now on no file this process writes may grow past ``nbytes``: a write that would fails
    with EFBIG (SIGXFSZ, which would kill the process, is ignored), as writes on a full disk fail."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def kill_at_publish():
    """SIGKILL this process at the rename that moves a finished checkpoint folder into place."""

    def hook(event, args):
        if event == "os.rename" and os.path.basename(os.fspath(args[0])).startswith(".tmp-checkpoint-"):
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument("--resume")
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--hang-in-save", type=int, default=0, help="stall inside the checkpoint write of this step")
    p.add_argument("--kill-at-publish", action="store_true", help="SIGKILL as a checkpoint is renamed in")
    p.add_argument("--file-size-limit", type=int, default=0, help="bytes (RLIMIT_FSIZE); 0: none")
    p.add_argument("--limit-from-step", type=int, default=0, help="apply it in this step (0: before fit)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = TrainConfig(out=args.out, max_steps=args.max_steps, batch_size=8, lr=1e-2, seed=5, checkpoint_every=3,
                      keep_checkpoints=2, ema_decay=0.9, progress=False, resume=args.resume)

    def step(model, batch, ctx):
        time.sleep(args.step_sleep)
        if args.file_size_limit and args.limit_from_step == ctx.step + 1:
            limit_file_size(args.file_size_limit)
        return toy_step(model, batch, ctx)

    t = Trainer(cfg, toy_model(), ToyData(), step, run_config={"worker": "kill_worker", "batch_size": 8})
    if args.hang_in_save:
        real = checkpoint.write_state

        def write_state(acc, path, **parts):
            real(acc, path, **parts)
            if t.step == args.hang_in_save:
                open(os.path.join(args.out, "in-save"), "w").close()
                time.sleep(60)  # half-written: the weights are there, the state file is not

        checkpoint.write_state = write_state
    if args.kill_at_publish:
        kill_at_publish()
    if args.file_size_limit and not args.limit_from_step:
        limit_file_size(args.file_size_limit)
    model = t.fit()
    with open(os.path.join(args.out, "final.json"), "w") as f:
        json.dump([p.detach().flatten().tolist() for p in model.parameters()], f)


if __name__ == "__main__":
    main()
