"""Run by test_training under `accelerate launch --num_processes 2`: trains the toy model and writes
each process's parameter sums, so the test can check that the processes stayed in sync; then takes
one contrastive step on its share of a batch (embeddings gathered from both processes) and writes the
loss and the gradients DDP leaves, to compare with one process over the whole batch."""

import json
import os
import sys

from latentgen.training import TrainConfig, Trainer
from tests.toy import NEGATIVE_SHARES, ToyData, ToyTowers, toy_model, toy_pairs, toy_step


def contrastive_step(accelerator, out):
    from latentgen.contrastive import clip_loss, gather_rows

    rank = accelerator.process_index
    model = accelerator.prepare(ToyTowers())
    pixels, tokens, negatives = toy_pairs()
    mine = slice(4 * rank, 4 * rank + 4)
    image, text, hard = model(pixels[mine], tokens[mine], negatives[slice(*NEGATIVE_SHARES[rank])])
    scale = accelerator.unwrap_model(model).logit_scale
    local = clip_loss(image, text, scale, hard).item()  # this process's share alone
    loss = clip_loss(gather_rows(image), gather_rows(text), scale, gather_rows(hard))
    accelerator.backward(loss)
    grads = {n: p.grad.flatten().tolist() for n, p in accelerator.unwrap_model(model).named_parameters()}
    with open(os.path.join(out, f"contrastive-{rank}.json"), "w") as f:
        json.dump({"loss": loss.item(), "local_loss": local, "grads": grads}, f)


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
    contrastive_step(t.accelerator, out)
    t.accelerator.wait_for_everyone()
    import torch.distributed as dist

    if dist.is_initialized():  # a clean teardown: gloo's threads stopped before the interpreter exits
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
