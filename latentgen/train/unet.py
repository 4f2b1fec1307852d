"""Train the conditional UNet in a frozen VAE's latent space, conditioned on a frozen text encoder.

    latentgen train unet --data data/shapes64 --data data/emoji64 \\
        --vae runs/vae --text-encoder runs/clip --out runs/unet --preset small

The VAE latents (posterior mean and std) and the prompt embeddings are computed once and cached
(``latentgen/cache.py``); each step samples a latent, drops the caption to "" with probability
``caption_dropout`` (what classifier-free guidance needs) and takes the v-prediction loss of
``latentgen/diffusion.py``. The result is a complete model folder in the diffusers layout
(``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``,
plus ``clip/`` when the text encoder folder has one, for scoring) with a model card.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from latentgen.models.unet import PRESETS
from latentgen.train.common import SummaryShuffle, load_text_encoder, probability
from latentgen.train.config import RunConfig, TrainerError, command_for, main_for, opt

GRID_PROMPTS = (
    "a large red circle at center",
    "a small blue square at top left",
    "a large yellow triangle at bottom right",
    "a large green square at left and a small purple circle at right",
    "a large blue circle at top and a large orange square at bottom",
    "a small red triangle at top right and a large yellow circle at bottom left",
    "a large purple triangle at center",
    "a large orange circle at top left and a small green triangle at center and a small blue square at bottom",
)


@dataclass(frozen=True)
class UNetTrainConfig(RunConfig):
    TRAINER = "unet"
    REQUIRED = ("data",)
    MAY_CHANGE = ("val_steps", "val_guidance", "val_adherence")

    max_steps: int = 20_000
    batch_size: int = 32
    lr: float = 2e-4
    warmup_steps: int = 500
    ema_decay: float | None = 0.999
    checkpoint_every: int = 1000
    validate_every: int = 2000
    preset: str = opt("small", "UNet size", choices=tuple(PRESETS))
    vae: str | None = opt(None, "folder with vae/ (a VAE run or a model folder); default: --model", metavar="DIR")
    text_encoder: str | None = opt(None, "folder with text_encoder/ and tokenizer/ (a CLIP run or a model "
                                   "folder); default: --model", metavar="DIR")
    size: int = opt(64, "image side the data is prepared at")
    caption_dropout: float = opt(0.1, "share of captions replaced by ''", type=probability)
    min_snr_gamma: float | None = opt(None, "min-SNR loss weighting (e.g. 5); off by default")
    val_steps: int = opt(25, "sampling steps for validation images")
    val_guidance: float = opt(4.0, "guidance scale for validation images")
    val_adherence: int = opt(0, "shapes prompts scored by the checker at each validation (0: off)")
    shuffle_summary: float = opt(
        0.0, "with probability P per caption, the text states from its <|endoftext|> on are another caption's "
        "of the same length in tokens, so the UNet reads each word's own state rather than the causal encoder's "
        "whole-caption summary (for text encoders trained with --token-loss); 0: off", type=probability)
    shuffle_summary_multi: float | None = opt(
        None, "the shuffle's probability for captions that name two or more shapes; default: --shuffle-summary's",
        type=probability)

    def __post_init__(self):
        super().__post_init__()
        if self.shuffle_summary_multi is not None and not self.shuffle_summary:
            raise ValueError("--shuffle-summary-multi sets the shuffle's probability for multi-shape captions: "
                             "give --shuffle-summary P (> 0) as well")
        if not (self.vae or self.model) or not (self.text_encoder or self.model):
            raise ValueError("give --vae DIR and --text-encoder DIR (or --model DIR holding vae/, text_encoder/ "
                             "and tokenizer/): train them with `latentgen train vae` and `latentgen train clip`")


Config = UNetTrainConfig


def vae_path(folder: str) -> str:
    """The VAE of a model folder (``folder/vae``) or of a VAE run (``folder``)."""
    sub = os.path.join(folder, "vae")
    return sub if os.path.isdir(sub) else folder


def load_components(cfg: UNetTrainConfig):
    """The frozen VAE, tokenizer and text encoder, with clear errors for a folder that lacks them."""
    from diffusers import AutoencoderKL

    path = vae_path(cfg.vae or cfg.model)
    if not os.path.exists(os.path.join(path, "config.json")):
        raise TrainerError(f"{path}/config.json is missing: --vae needs a VAE folder (`latentgen train vae`'s --out)")
    tok, te = load_text_encoder(cfg.text_encoder or cfg.model, "--text-encoder" if cfg.text_encoder else "--model")
    return AutoencoderKL.from_pretrained(path, use_safetensors=True), tok, te


def make_step_fn(cache, scaling_factor: float, caption_dropout: float, min_snr_gamma: float | None,
                 shuffle: SummaryShuffle | None = None):
    from latentgen.cache import sample_latents
    from latentgen.diffusion import diffusion_loss

    embeddings = cache["embeddings"]  # (K, L, D), kept on the CPU and gathered per batch
    uncond = int(cache["uncond_id"])

    def step_fn(unet, batch, ctx):
        latents = sample_latents(batch, scaling_factor, ctx.generator)  # (B, C, h, w)
        ids = batch["caption_id"].cpu()
        drop = torch.rand(ids.shape, generator=torch.Generator().manual_seed(ctx.step)) < caption_dropout
        ids = torch.where(drop, uncond, ids)
        emb = embeddings[ids].to(ctx.device)  # (B, L, D)
        if shuffle is not None:
            emb = shuffle(ids, emb, ctx.step)
        loss = diffusion_loss(unet, latents, emb, ctx.generator, min_snr_gamma=min_snr_gamma)
        return {"loss": loss}

    return step_fn


def build_pipeline(unet, vae, tok, te):
    from latentgen.diffusion import make_scheduler
    from latentgen.pipeline import LatentGenPipeline

    return LatentGenPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=make_scheduler("ddim"))


def make_validate_fn(cfg: UNetTrainConfig, vae, tok, te):
    def validate(trainer, unet, step):
        from latentgen.eval.grid import image_grid

        pipe = build_pipeline(unet, vae, tok, te)
        pipe.set_progress_bar_config(disable=True)
        g = torch.Generator("cpu").manual_seed(0)
        images = pipe(list(GRID_PROMPTS), num_inference_steps=cfg.val_steps, guidance_scale=cfg.val_guidance,
                      generator=g).images
        trainer.log_images("samples", image_grid(images, list(GRID_PROMPTS)))
        if not cfg.val_adherence:
            return {}
        from latentgen.eval.adherence import evaluate_shapes

        res = evaluate_shapes(pipe, n=cfg.val_adherence, steps=cfg.val_steps, guidance=cfg.val_guidance, seed=0)
        return {"adherence": res["all"]["full_prompt_accuracy"]}

    return validate


def run(cfg: UNetTrainConfig) -> dict:
    from latentgen.cache import LatentDataset, cache_captions, load_or_build_cache
    from latentgen.data.folder import ImageCaptionDataset
    from latentgen.export import export_model
    from latentgen.models.unet import build_unet, get_unet_config
    from latentgen.training import Trainer

    vae, tok, te = load_components(cfg)
    data = ImageCaptionDataset(list(cfg.data), size=cfg.size)
    cache = load_or_build_cache(data, vae.eval(), tok, te.eval(), os.path.join(cfg.out, "cache"), cfg.size)
    latent = cache["mean"].shape[1:]  # (C, h, w)
    ucfg = dataclasses.replace(get_unet_config(cfg.preset), in_channels=latent[0], out_channels=latent[0],
                               sample_size=latent[1], cross_attention_dim=te.config.hidden_size)
    scaling = float(vae.config.scaling_factor)
    shuffle = None
    if cfg.shuffle_summary:
        shuffle = SummaryShuffle(tok, cache_captions(it.caption for it in data.items), cache["embeddings"],
                                 cfg.shuffle_summary, cfg.seed, cfg.shuffle_summary_multi)
    record = cfg.record(unet=dataclasses.asdict(ucfg), scaling_factor=scaling, examples=len(data))
    trainer = Trainer(cfg.loop(), build_unet(ucfg), LatentDataset(cache),
                      make_step_fn(cache, scaling, cfg.caption_dropout, cfg.min_snr_gamma, shuffle),
                      validate_fn=make_validate_fn(cfg, vae, tok, te), run_config=record,
                      may_change=cfg.may_change())
    unet = trainer.fit()
    if not trainer.finished or not trainer.is_main:
        return {"finished": trainer.finished, "step": trainer.step}
    te_dir = cfg.text_encoder or cfg.model
    card = {"front": {"sampler": "ddim", "num_inference_steps": cfg.val_steps, "guidance_scale": cfg.val_guidance},
            "title": "latentgen model",
            "body": [f"A text-to-image latent diffusion model: UNet preset `{cfg.preset}`, trained on "
                     f"{len(data)} images."],
            "command": command_for(cfg), "record": record}
    export_model(cfg.out, build_pipeline(unet, vae, tok, te), configs={"unet": ucfg},
                 sources={"vae": cfg.vae or cfg.model}, clip_from=te_dir, card=card,
                 prompts=[it.caption for it in data.items])
    print(f"model saved to {cfg.out}")
    return {"finished": True, "step": trainer.step, "out": cfg.out}


def main(argv=None) -> dict:
    return main_for(run, UNetTrainConfig, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
