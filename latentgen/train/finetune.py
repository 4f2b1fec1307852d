"""Fine-tune a model on your own captioned images: LoRA (peft) or the full UNet; optionally the text encoder.

    # a LoRA of rank 32 (the default) on a folder of images with .txt captions or a metadata.jsonl
    latentgen train finetune --model latentgen/weights/default --data my_images --out runs/mine
    # the whole UNet instead (a complete model folder; it forgets more of the base's 2-object scenes)
    latentgen train finetune --model latentgen/weights/default --data my_images --out runs/mine --lora-rank 0
    # a concept from a few images (DreamBooth), with prior preservation
    latentgen train finetune --model M --data dog_photos --out runs/dog \\
        --instance-prompt "a photo of sks dog" --class-prompt "a photo of a dog" --num-class-images 50

From Python: ``run(FinetuneConfig(model=M, data=("my_images",), out="runs/mine"))``.

LoRA output: ``pytorch_lora_weights.safetensors`` at the top of ``out`` (:mod:`latentgen.lora`):
``LatentGenPipeline.load_lora_weights(out)`` and diffusers' ``StableDiffusionPipeline.load_lora_weights``
both load it (scale it with ``pipe.fuse_lora(lora_scale=s)`` or ``set_adapters``). Full fine-tuning writes
a complete model folder (:mod:`latentgen.export`). Either way ``out`` gets a card with the command that
made it.

Before the UNet trains: the caption words new to the tokenizer are named (many of them: a warning, with
``text_encoder`` and ``train_text_encoder`` as remedies); the VAE's round trip on the folder is measured,
and below 30 dB (or 25 dB on edges and small details) its decoder is tuned on the folder and on the base
model's own images (``latentgen.adapt``; a VAE maps colours and small shapes it never saw onto its own, so
no UNet could draw them); and the base model draws prior images (``prior="on"``) for the prompts it was
trained on (its folder's ``prompts.txt``) alternating with the captions that lost their new words, trained
beside the folder so the model keeps what it drew (:mod:`latentgen.train.prior`). With a tuned decoder or
another text encoder a LoRA run writes the base model with that VAE and text encoder at ``out`` too:
``from_pretrained(out)`` then ``load_lora_weights(out)``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass

import torch
from torch import nn

from latentgen.lora import UNET_LORA_TARGETS
from latentgen.train.common import probability
from latentgen.train.config import RunConfig, main_for, opt

LORA_LR, FULL_LR = 5e-4, 1e-4  # the learning rates when none is given
LORA_TARGETS = UNET_LORA_TARGETS + ",conv1,conv2"  # the attention projections and the ResNet convolutions


@dataclass(frozen=True)
class FinetuneConfig(RunConfig):
    TRAINER = "finetune"
    REQUIRED = ("model", "data")
    MAY_CHANGE = ("val_prompt", "val_steps", "val_guidance")

    max_steps: int = 700  # 40 images: the most steps within 5 min on 2 cores (bench/results/finetune.md)
    batch_size: int = 8
    lr: float | None = opt(None, f"default: {FULL_LR:g} in full, {LORA_LR:g} with LoRA (--lora-rank > 0)")
    checkpoint_every: int = 200
    validate_every: int = 200
    lora_rank: int = opt(32, "the rank of the UNet's LoRA (it learns a new colour or shape as well as full "
                         "fine-tuning and keeps more 2-object scenes: bench/results/finetune.md); 0 = full "
                         "fine-tuning")
    lora_alpha: float | None = opt(None, "LoRA alpha (default: the rank)")
    lora_targets: str = opt(LORA_TARGETS, "comma-separated UNet module names the LoRA adapts")
    text_encoder: str | None = opt(
        None, "use this text encoder and tokenizer instead of the base model's: a CLIP run continued on your "
        "folder (latentgen train clip --model BASE --data DIR --out DIR)", metavar="DIR")
    train_text_encoder: bool = opt(False, "also train the text encoder (LoRA when --lora-rank > 0, else "
                                   "fully)")
    instance_prompt: str | None = opt(None, "caption every training image with this prompt (DreamBooth)")
    class_prompt: str | None = opt(None, "prior preservation: the base model draws images for this prompt")
    num_class_images: int = opt(0, "images drawn for --class-prompt")
    prior_loss_weight: float = opt(1.0, "weight of the loss on prior and class images")
    val_prompt: tuple[str, ...] = opt((), "rendered at each validation (repeatable)")
    val_steps: int = opt(25, "sampling steps for validation, prior and class images")
    val_guidance: float = opt(4.0, "guidance scale for validation, prior and class images")
    caption_dropout: float = opt(
        0.0, "share of captions replaced by '' (trains the unconditional prediction on your images too, which "
        "guidance then subtracts: a new shape is drawn less often, bench/results/finetune.md)", type=probability)
    tune_decoder: str = opt(
        "auto", "tune the VAE's decoder on the folder first (encoder unchanged, so the UNet's latents keep "
        "their meaning): auto = when the VAE reconstructs the folder below 30 dB, or below 25 dB on its edges "
        "and small details: colours or small shapes it never saw",
        choices=("auto", "on", "off"))
    decoder_steps: int = opt(150, "steps of decoder tuning")
    decoder_lr: float = opt(3e-4, "learning rate of decoder tuning")
    prior: str = opt(
        "on", "prior preservation: the base model's own images for your captions with their new words left "
        "out (--prior-images of them) are trained on beside yours, weighted by --prior-loss-weight, so the "
        "model keeps what it drew before", choices=("on", "off"))
    prior_images: int | None = opt(
        None, "how many prior images the base model draws; default: as many as your images (half of each "
        "batch). Fewer leave more of each batch to your images: a new shape is learnt sooner, the old "
        "prompts are held less", metavar="N")
    prior_prompts: str | None = opt(
        None, "the prompts the prior images are drawn for, one per line; default: the base model folder's "
        "prompts.txt (a sample of the captions it was trained on) where it has one, else your captions without "
        "their new words", metavar="FILE")
    prior_target: str = opt(
        "base", "what the model is held to on the prior and class images: images = their own noise "
        "(DreamBooth's prior loss), base = the frozen base model's prediction on the same noisy latent "
        "(output preservation: a target without sampling noise, one more UNet pass per prior image)",
        choices=("images", "base"))
    shuffle_summary: float = opt(
        0.0, "with probability P per caption, the text states from its <|endoftext|> on are another "
        "caption's of the same length in tokens, so the UNet reads each word's own state rather than the "
        "causal encoder's whole-caption summary (for text encoders trained with --token-loss); 0: off",
        type=probability, metavar="P")
    shuffle_summary_multi: float | None = opt(
        None, "the shuffle's probability for captions that name two or more shapes; default: "
        "--shuffle-summary's", type=probability, metavar="P")

    def __post_init__(self):
        if not 1 <= self.max_steps <= 1_000_000:  # before the loop's own check, for the flag's bounds
            raise ValueError(f"--max-steps must be from 1 to 1000000, got {self.max_steps}")
        super().__post_init__()
        if not 1 <= self.decoder_steps <= 100_000:
            raise ValueError(f"--decoder-steps must be from 1 to 100000, got {self.decoder_steps}")
        if not 0 <= self.lora_rank <= 256:
            raise ValueError(f"--lora-rank must be from 0 to 256 (0 = full fine-tuning), "
                             f"got {self.lora_rank}")
        if self.prior_images is not None and not 1 <= self.prior_images <= 100_000:
            raise ValueError(f"--prior-images must be from 1 to 100000 (leave it out for as many as your "
                             f"images, or give --prior off), got {self.prior_images}")
        if self.class_prompt and self.num_class_images < 1:
            raise ValueError("--class-prompt needs --num-class-images N (N >= 1)")
        if self.num_class_images and not self.class_prompt:
            raise ValueError("--num-class-images needs --class-prompt TEXT")
        if self.shuffle_summary and self.train_text_encoder:
            raise ValueError("--shuffle-summary mixes the cached states of a frozen text encoder: "
                             "leave out --train-text-encoder")
        if self.shuffle_summary_multi is not None and not self.shuffle_summary:
            raise ValueError("--shuffle-summary-multi sets the shuffle's probability for multi-shape "
                             "captions: give --shuffle-summary P (> 0) as well")

    @property
    def lora(self) -> bool:
        return self.lora_rank > 0

    def loop(self, **overrides):
        """The loop's config, with the learning rate of the mode when none is given."""
        lr = self.lr if self.lr is not None else LORA_LR if self.lora else FULL_LR
        return super().loop(**{"lr": lr, **overrides})


Config = FinetuneConfig


# -- the data


class IndexedLatents(torch.utils.data.Dataset):
    """The cached latents, each item with its index (which tells folder images from prior images)."""

    def __init__(self, cache):
        from latentgen.cache import LatentDataset

        self.inner = LatentDataset(cache)

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return {**self.inner[i], "index": i}


def folder_data(cfg: FinetuneConfig, size: int):
    """The user's images, captioned by their captions or by the DreamBooth instance prompt."""
    from latentgen.data.folder import ImageCaptionDataset
    from latentgen.train.prior import CaptionOverride

    data = ImageCaptionDataset(list(cfg.data), size=size)
    return CaptionOverride(data, cfg.instance_prompt) if cfg.instance_prompt else data


def training_set(cfg: FinetuneConfig, pipe, data, prior_dir: str, size: int):
    """The folder, then the prior images (``prior="on"``), then the class images (``class_prompt``)."""
    from latentgen.data.folder import ImageCaptionDataset
    from latentgen.train.prior import draw_prior

    folders = [data]
    if cfg.prior == "on":
        folders.append(ImageCaptionDataset([prior_dir], size=size, empty_captions=True))  # "": unconditional
    if cfg.class_prompt:
        class_dir = draw_prior(pipe, [cfg.class_prompt], cfg.num_class_images,
                               os.path.join(cfg.out, "class_images"), size, cfg.seed, cfg.val_steps,
                               cfg.val_guidance)
        folders.append(ImageCaptionDataset([class_dir], size=size))
    dataset = torch.utils.data.ConcatDataset(folders) if len(folders) > 1 else data
    dataset.items = [it for d in folders for it in d.items]
    return dataset


# -- the step


def make_step_fn(cache, scaling: float, caption_dropout: float, tokenizer, captions: list[str],
                 is_prior: torch.Tensor, prior_weight: float, train_te: bool, shuffle=None,
                 prior_target: str = "images"):
    """The v-prediction loss on the folder's latents plus ``prior_weight`` times that on the prior images'
    (Ruiz et al. 2023, Eq. 2), or with ``prior_target="base"`` times the distance of the prior images'
    prediction to the frozen base model's (``ctx.frozen["base_unet"]``); captions dropped to "" with
    probability ``caption_dropout``. A batch is one pass of the UNet (``split_losses``)."""
    from latentgen.cache import sample_latents
    from latentgen.diffusion import split_losses
    from latentgen.pipeline import encode_prompts

    embeddings, uncond = cache["embeddings"], int(cache["uncond_id"])

    def step_fn(model, batch, ctx):
        latents = sample_latents(batch, scaling, ctx.generator)  # (B, C, h, w)
        ids = batch["caption_id"].cpu()
        drop = torch.rand(ids.shape, generator=torch.Generator().manual_seed(ctx.step)) < caption_dropout
        ids = torch.where(drop, uncond, ids)
        if train_te:
            emb = encode_prompts(tokenizer, model["text_encoder"], [captions[i] for i in ids], ctx.device)
        else:
            emb = embeddings[ids].to(ctx.device)  # (B, L, D)
            if shuffle is not None:
                emb = shuffle(ids, emb, ctx.step)
        held = is_prior[batch["index"].cpu()].to(latents.device)  # (B,) the prior and class images
        base = ctx.frozen["base_unet"] if prior_target == "base" and held.any() else None
        inst, pri = split_losses(model["unet"], latents, emb, held, ctx.generator, base)
        logs = {"loss": inst + prior_weight * pri}
        if held.any() and not held.all():
            logs.update(instance_loss=inst, prior_loss=pri)
        return logs

    return step_fn


def trainable(cfg: FinetuneConfig, pipe) -> nn.ModuleDict:
    """What trains: the UNet (its LoRA adapters, or all of it) and, with ``train_text_encoder``, the text
    encoder (likewise)."""
    from latentgen.lora import add_lora, add_text_lora

    if cfg.lora:
        add_lora(pipe.unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    parts = {"unet": pipe.unet}
    if cfg.train_text_encoder:
        te = pipe.text_encoder
        parts["text_encoder"] = (add_text_lora(te, cfg.lora_rank, cfg.lora_alpha) if cfg.lora
                                 else te.requires_grad_(True))
    return nn.ModuleDict(parts)


def make_validate_fn(cfg: FinetuneConfig, pipe):
    def validate(trainer, model, step):
        if not cfg.val_prompt:
            return {}
        from latentgen.eval.grid import image_grid
        from latentgen.pipeline import LatentGenPipeline

        te = getattr(model, "text_encoder", pipe.text_encoder)  # a ModuleDict's parts are its attributes
        vpipe = LatentGenPipeline(vae=pipe.vae, text_encoder=te, tokenizer=pipe.tokenizer, unet=model["unet"],
                                  scheduler=pipe.scheduler)
        vpipe.set_progress_bar_config(disable=True)
        prompts = list(cfg.val_prompt)
        imgs = vpipe(prompts, num_inference_steps=cfg.val_steps, guidance_scale=cfg.val_guidance,
                     generator=torch.Generator().manual_seed(0)).images
        trainer.log_images("validation", image_grid(imgs, prompts))
        return {}

    return validate


# -- the run


def prepare(cfg: FinetuneConfig):
    """The base pipeline (with ``text_encoder`` swapped in and its decoder tuned where needed), the training
    set, how many of its images are the folder's, and what was found on the way (for the run's record)."""
    from latentgen.train.base import load_base, swap_text_encoder
    from latentgen.train.codec import tune_decoder
    from latentgen.train.prior import draw_prior, prior_source, warn_new_words

    pipe = load_base(cfg.model)
    pipe.set_progress_bar_config(disable=not cfg.progress)  # the prior images' sampling bars
    if cfg.text_encoder:
        swap_text_encoder(pipe, cfg.text_encoder)
    pipe.vae.eval()
    pipe.text_encoder.eval()
    size = pipe.default_size()[0]
    data = folder_data(cfg, size)
    captions = [it.caption for it in data.items]
    share, new_words = warn_new_words(pipe.tokenizer, captions)
    prior_dir = os.path.join(cfg.out, "prior_images")
    if cfg.prior == "on" or cfg.tune_decoder != "off":  # the decoder's prior too: drawn once, kept
        prompts = prior_source(cfg.model, cfg.prior_prompts, captions, new_words)
        n_prior = cfg.prior_images or len(data.items)
        draw_prior(pipe, prompts, n_prior, prior_dir, size, cfg.seed, cfg.val_steps, cfg.val_guidance)
    codec = tune_decoder(cfg, pipe.vae, data, prior_dir)
    dataset = training_set(cfg, pipe, data, prior_dir, size)
    return pipe, dataset, len(data), {"new_word_share": round(share, 3), "decoder": codec}


def run(cfg: FinetuneConfig) -> dict:
    """Fine-tune ``cfg.model`` on ``cfg.data`` into ``cfg.out`` (resumable); ``{"finished", "step", ...}``."""
    from latentgen.cache import cache_captions, load_or_build_cache
    from latentgen.fsutil import atomic_write_text
    from latentgen.lora import LORA_INFO
    from latentgen.train.common import SummaryShuffle
    from latentgen.training import Trainer

    pipe, dataset, n_folder, found = prepare(cfg)
    size = pipe.default_size()[0]
    cache = load_or_build_cache(dataset, pipe.vae, pipe.tokenizer, pipe.text_encoder,
                                os.path.join(cfg.out, "cache"), size)
    distinct = cache_captions([it.caption for it in dataset.items])  # the cache's caption ids index this list
    shuffle = None
    if cfg.shuffle_summary:
        shuffle = SummaryShuffle(pipe.tokenizer, distinct, cache["embeddings"], cfg.shuffle_summary, cfg.seed,
                                 cfg.shuffle_summary_multi)
    te = pipe.text_encoder  # frozen unless train_text_encoder
    is_prior = torch.arange(len(dataset)) >= n_folder
    frozen = {} if cfg.train_text_encoder else {"text_encoder": te}
    if cfg.prior_target == "base" and is_prior.any():  # the base UNet before the adapters or training touch it
        frozen["base_unet"] = copy.deepcopy(pipe.unet).requires_grad_(False).eval()
    model = trainable(cfg, pipe)
    record = cfg.record(base=os.path.abspath(cfg.model), examples=len(dataset), **found)
    model_card = card(cfg, record, n_folder)  # before training: a base whose card is unreadable fails now
    step_fn = make_step_fn(cache, float(pipe.vae.config.scaling_factor), cfg.caption_dropout, pipe.tokenizer,
                           distinct, is_prior, cfg.prior_loss_weight, cfg.train_text_encoder, shuffle,
                           cfg.prior_target)
    trainer = Trainer(cfg.loop(), model, IndexedLatents(cache), step_fn,
                      frozen=frozen,
                      validate_fn=make_validate_fn(cfg, pipe), run_config=record, may_change=cfg.may_change())
    model = trainer.fit()
    if not trainer.finished or not trainer.is_main:
        return {"finished": trainer.finished, "step": trainer.step}
    captions = [it.caption for it in dataset.items[:n_folder]]
    save(cfg, pipe, model, found["decoder"]["tuned"], model_card, captions)
    atomic_write_text(os.path.join(cfg.out, LORA_INFO), json.dumps(record, indent=2))
    print(f"saved to {cfg.out}")
    return {"finished": True, "step": trainer.step, "out": cfg.out, "lora": cfg.lora}


def card(cfg: FinetuneConfig, record: dict, n_images: int) -> dict:
    """The card of ``out``: the base model's sampling defaults, what was tuned, the command that made it."""
    from latentgen.modelcard import read_card_defaults
    from latentgen.train.config import command_for

    what = f"LoRA adapters of rank {cfg.lora_rank}" if cfg.lora else "the whole UNet"
    te = " and the text encoder" if cfg.train_text_encoder else ""
    return {"front": read_card_defaults(cfg.model), "title": "latentgen fine-tune",
            "body": [f"`{cfg.model}` fine-tuned on {n_images} images: {what}{te} trained."],
            "command": command_for(cfg), "record": record}


def save(cfg: FinetuneConfig, pipe, model: nn.ModuleDict, decoder_tuned: bool, card: dict,
         captions: list[str]) -> None:
    """Full: a complete model folder at ``out``, its ``prompts.txt`` drawn from the base's and the folder's
    ``captions``. LoRA: diffusers-format LoRA weights at the top of ``out``;
    with ``text_encoder`` or a tuned decoder also the base model with that text encoder and VAE, so
    ``from_pretrained(out)`` then ``load_lora_weights(out)`` gives the fine-tuned model."""
    from latentgen.export import export_model
    from latentgen.lora import save_lora
    from latentgen.modelcard import write_card
    from latentgen.pipeline import LatentGenPipeline
    from latentgen.train.base import load_base, swap_text_encoder

    te_dir = cfg.text_encoder or cfg.model
    has_clip = cfg.text_encoder and os.path.isdir(os.path.join(cfg.text_encoder, "clip"))
    keep = {"sources": {"unet": cfg.model, "vae": cfg.model, "text_encoder": te_dir},  # their preset configs
            "clip_from": cfg.text_encoder if has_clip else cfg.model, "card": card, "prompts_from": cfg.model}
    te = getattr(model, "text_encoder", None)  # trained, or None
    if not cfg.lora:
        from latentgen.train.prior import known_prompts

        known = known_prompts(cfg.model)
        keep = {**keep, "prompts_from": None, "prompts": (known[0] if known else []) + captions}
        tuned = LatentGenPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder if te is None else te,
                                  tokenizer=pipe.tokenizer, unet=model["unet"], scheduler=pipe.scheduler)
        export_model(cfg.out, tuned, **keep)
        return
    if cfg.text_encoder or decoder_tuned:
        base = load_base(cfg.model)  # untouched by the adapters trained in place
        if cfg.text_encoder:
            swap_text_encoder(base, cfg.text_encoder)
        base.register_modules(vae=pipe.vae)
        export_model(cfg.out, base, **keep)
    else:
        os.makedirs(cfg.out, exist_ok=True)
        write_card(cfg.out, **card)
    save_lora(cfg.out, model["unet"], te)


def main(argv=None) -> dict:
    return main_for(run, FinetuneConfig, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
