"""A toy regression problem for testing the training loop (no latentgen model involved)."""

import torch
from torch import nn
from torch.utils.data import Dataset


class ToyData(Dataset):
    def __init__(self, n=64, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g) + 0.5

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def toy_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 1))


def toy_step(model, batch, ctx):
    pred = model(batch["x"])
    noise = 0.01 * torch.randn(pred.shape, generator=ctx.generator, device=ctx.device)  # exercises the step RNG
    loss = ((pred + noise - batch["y"]) ** 2).mean()
    return {"loss": loss}


class ToyTowers(nn.Module):
    """Two linear "towers" and a learned temperature: a CLIP in miniature, for the contrastive loss."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.image, self.text = nn.Linear(6, 4), nn.Linear(5, 4)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, pixels, tokens, negatives):
        return self.image(pixels), self.text(tokens), self.text(negatives)


def toy_pairs(seed=0):
    """A global batch: 8 "images", their 8 "captions" and 3 hard-negative captions."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 6, generator=g), torch.randn(8, 5, generator=g), torch.randn(3, 5, generator=g)


NEGATIVE_SHARES = ((0, 1), (1, 3))  # rows of the negatives each of two processes holds: uneven on purpose
