"""The trainers: each a frozen config dataclass and ``run(cfg)`` (``latentgen train <name>``).

    from latentgen.train import unet
    unet.run(unet.UNetTrainConfig(out="runs/unet", data=("data/shapes",), model="runs/base", max_steps=200))
"""

TRAINERS = ("vae", "clip", "unet", "finetune", "distill", "recipe", "bundle", "prompts")
