"""Fine-tune a model on your own captioned images: full UNet, or LoRA through peft; optionally the text encoder.

    # LoRA (rank 8) on a folder of images with .txt captions
    python -m train.finetune --model latentgen/weights/default --data my_images --out runs/mine --lora-rank 8
    # full fine-tuning of the UNet
    python -m train.finetune --model latentgen/weights/default --data my_images --out runs/mine --lora-rank 0
    # a concept from a few images (DreamBooth), with prior preservation
    python -m train.finetune --model M --data dog_photos --out runs/dog --instance-prompt "a photo of sks dog" \
        --class-prompt "a photo of a dog" --num-class-images 50

LoRA output: ``pytorch_lora_weights.safetensors`` at the top of ``--out``, written with diffusers'
``save_lora_weights``: ``LatentGenPipeline.load_lora_weights(out)`` and stock diffusers'
``StableDiffusionPipeline.load_lora_weights(out)`` both load it (scale it with
``pipe.fuse_lora(lora_scale=s)`` or ``set_adapters``). Full fine-tuning writes a complete model folder.

Before the UNet trains: the caption words new to the tokenizer are named (many of them: a warning, with
``--text-encoder`` and ``--train-text-encoder`` as remedies); the VAE's round trip on the folder is
measured, and below 30 dB its decoder is tuned on the folder and on the base model's own images
(``latentgen.adapt``; a VAE maps colours it never saw onto its own, so no UNet could draw them); and
the base model draws prior images for the captions without their new words (``--prior on``), trained
beside the folder so the model keeps what it drew. With a tuned decoder a LoRA run writes the base model
with that VAE at ``--out`` too: ``from_pretrained(out)`` then ``load_lora_weights(out)``.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import torch
from torch import nn

from latentgen.fsutil import atomic_write_text
from train import common

DEFAULT_LORA_TARGETS = "to_q,to_k,to_v,to_out.0"
TEXT_LORA_TARGETS = "q_proj,k_proj,v_proj,out_proj"
PEFT_PREFIX = "base_model.model."  # get_peft_model's wrapper: PeftModel.base_model (LoraModel).model


def parse_args(argv=None):
    p = common.base_parser(__doc__.splitlines()[0], needs_model=True)
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank; 0 = full fine-tuning of the UNet")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    p.add_argument("--lora-targets", default=DEFAULT_LORA_TARGETS, help="comma-separated UNet module names")
    p.add_argument("--text-encoder", metavar="DIR",
                   help="use this text encoder and tokenizer instead of the base model's: a CLIP run "
                        "continued on your folder (python -m train.clip --model BASE --data DIR --out DIR)")
    p.add_argument("--train-text-encoder", action="store_true",
                   help="also train the text encoder (LoRA when --lora-rank > 0, else fully)")
    p.add_argument("--instance-prompt", help="caption every training image with this prompt (DreamBooth)")
    p.add_argument("--class-prompt", help="prior preservation: the base model draws images for this prompt")
    p.add_argument("--num-class-images", type=int, default=0)
    p.add_argument("--prior-loss-weight", type=float, default=1.0)
    p.add_argument("--val-prompt", action="append", default=[], help="rendered at each validation (repeatable)")
    p.add_argument("--val-steps", type=int, default=25)
    p.add_argument("--val-guidance", type=float, default=4.0)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--tune-decoder", choices=["auto", "on", "off"], default="auto",
                   help="tune the VAE's decoder on the folder first (encoder unchanged, so the UNet's latents keep "
                        "their meaning): auto = when the VAE reconstructs the folder below "
                        f"{30:g} dB, e.g. colours it never saw")
    p.add_argument("--decoder-steps", type=int, default=150, help="steps of decoder tuning")
    p.add_argument("--decoder-lr", type=float, default=1e-4)
    p.add_argument("--prior", choices=["on", "off"], default="on",
                   help="prior preservation: the base model's own images for your captions with their new words "
                        "left out (as many as your images) are trained on beside yours, weighted by "
                        "--prior-loss-weight, so the model keeps what it drew before")
    common.add_shuffle_summary(p)
    args = p.parse_args(argv)
    if not 1 <= args.decoder_steps <= 100_000:
        p.error(f"--decoder-steps must be from 1 to 100000, got {args.decoder_steps}")
    if not 0 <= args.lora_rank <= 256:
        p.error(f"--lora-rank must be from 0 to 256 (0 = full fine-tuning), got {args.lora_rank}")
    if args.max_steps is not None and not 1 <= args.max_steps <= 1_000_000:
        p.error(f"--max-steps must be from 1 to 1000000, got {args.max_steps}")
    if args.class_prompt and args.num_class_images < 1:
        p.error("--class-prompt needs --num-class-images N (N >= 1)")
    if args.num_class_images and not args.class_prompt:
        p.error("--num-class-images needs --class-prompt TEXT")
    if args.shuffle_summary and args.train_text_encoder:
        p.error("--shuffle-summary mixes the cached states of a frozen text encoder: leave out --train-text-encoder")
    common.check_shuffle_summary(p, args)
    return args


def load_base(model_dir: str):
    """The base pipeline; a folder that is not a latentgen or SD model is a clear error."""
    from latentgen.pipeline import LatentGenPipeline

    lora = os.path.join(model_dir, "pytorch_lora_weights.safetensors")
    if os.path.isfile(lora) and not os.path.isfile(os.path.join(model_dir, "model_index.json")):
        base = _read_json(os.path.join(model_dir, "finetune.json")).get("base", "its base model")
        raise SystemExit(f"error: --model {model_dir} holds LoRA weights (a fine-tune), not a full model: give "
                         f"the model it was fine-tuned from ({base}), or a model folder that has the LoRA merged "
                         "(LatentGenPipeline.from_pretrained(base), load_lora_weights(dir), fuse_lora(), "
                         "save_pretrained(new))")
    try:
        return LatentGenPipeline.from_pretrained(model_dir)
    except (OSError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: --model {model_dir} is not a latentgen or Stable Diffusion model folder "
                         f"(model_index.json with unet/, vae/, text_encoder/, tokenizer/, scheduler/): {e}")


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def swap_text_encoder(pipe, te_dir: str) -> None:
    """Put the text encoder and tokenizer of ``te_dir`` (a train.clip ``--out`` or a model folder) in ``pipe``."""
    tok, te = common.load_text_encoder(te_dir)
    te = te.to(pipe.text_encoder.dtype)
    want = pipe.unet.config.cross_attention_dim
    if te.config.hidden_size != want:
        raise SystemExit(f"error: --text-encoder {te_dir} gives {te.config.hidden_size}-wide states but the UNet "
                         f"attends to {want}: continue the base model's own CLIP (train.clip --model BASE)")
    pipe.register_modules(text_encoder=te.eval(), tokenizer=tok)


def warn_new_words(tokenizer, captions: list[str], threshold: float = 0.2) -> tuple[float, list[str]]:
    """Say which caption words are new to the tokenizer and what the fine-tune does about them; warn when
    many are. Returns (their share of the distinct words, the new words)."""
    from latentgen.models.clip import unseen_word_report

    report = unseen_word_report(tokenizer, captions)
    share = len(report.split) / max(report.n_words, 1)
    if report.split:
        shown = ", ".join(f"{w} ({'|'.join(p)})" for w, p in list(report.split.items())[:12])
        print(f"new words: {shown}. The text encoder reads them through these pieces; the UNet learns what "
              "they draw from your images, and the prior images are drawn from your captions without them.")
    if share >= threshold:
        warnings.warn(
            f"{report.summary()} The base text encoder has no meaning for these words: continue CLIP pretraining "
            "on this folder first (python -m train.clip --model BASE --data DIR --out DIR, then --text-encoder DIR) "
            "or fine-tune with --train-text-encoder.", stacklevel=2)
    return share, list(report.split)


def prior_prompts(captions: list[str], new_words: list[str]) -> list[str]:
    """The folder's captions with its new words left out (DreamBooth's class prompts, Ruiz et al. 2023,
    Sec. 3.3, made from every caption), each followed by it joined to the next with "and": scenes of two
    things, which a folder of single things would otherwise teach the model to forget."""
    drop = {w.lower() for w in new_words}
    kept = [" ".join(w for w in c.split() if w.lower().strip(",.;:!?") not in drop) for c in captions]
    singles = list(dict.fromkeys(k for k in kept if k))
    if len(singles) < 2:
        return singles
    pairs = [f"{a} and {b}" for a, b in zip(singles, singles[1:] + singles[:1])]
    return [p for pair in zip(singles, pairs) for p in pair]


def tune_decoder(args, pipe, data, prior_dir: str) -> dict:
    """Measure the VAE's round trip on the folder; below the floor (or with --tune-decoder on), tune its
    decoder on the folder and on the base model's own images in ``prior_dir`` (``latentgen.adapt``), in
    ``<out>/decoder``."""
    from latentgen.adapt import DECODER_PSNR_FLOOR, Decoder, DecoderData, decoder_step, roundtrip_psnr
    from latentgen.training import TrainConfig, Trainer

    vae = pipe.vae.eval()
    pixels = torch.stack([data[i]["pixels"] for i in range(min(len(data.items), 256))])  # (N, 3, S, S)
    before = roundtrip_psnr(vae, pixels)
    report = {"psnr_before": round(before, 2), "tuned": False}
    if args.tune_decoder == "off" or (args.tune_decoder == "auto" and before >= DECODER_PSNR_FLOOR):
        print(f"codec: the VAE reconstructs the folder at {before:.1f} dB; its decoder is kept")
        return report
    print(f"codec: the VAE reconstructs the folder at {before:.1f} dB (below {DECODER_PSNR_FLOOR:g}: it maps "
          f"what it never saw onto what it knows); tuning its decoder for {args.decoder_steps} steps")
    from latentgen.data.folder import ImageCaptionDataset

    prior_set = ImageCaptionDataset([prior_dir], size=pixels.shape[-1])
    prior = torch.stack([prior_set[i]["pixels"] for i in range(len(prior_set.items))])  # (P, 3, S, S)
    cfg = TrainConfig(out=os.path.join(args.out, "decoder"), max_steps=args.decoder_steps, batch_size=16,
                      lr=args.decoder_lr, seed=args.seed or 0, checkpoint_every=max(1, args.decoder_steps // 2),
                      log_every=10, resume=args.resume, progress=bool(args.progress is not False),
                      mixed_precision=args.mixed_precision or "no")
    Trainer(cfg, Decoder(vae), DecoderData(vae, pixels, prior), decoder_step,
            run_config={"trainer": "finetune-decoder", "prior_images": len(prior)}).fit()
    vae.eval()
    after = roundtrip_psnr(vae, pixels)
    print(f"codec: tuned decoder: {before:.1f} -> {after:.1f} dB on the folder")
    return {**report, "tuned": True, "psnr_after": round(after, 2), "steps": args.decoder_steps}


def draw_prior(pipe, prompts: list[str], n: int, out_dir: str, size: int, seed: int, steps: int,
               guidance: float) -> None:
    """``n`` images the base model draws for ``prompts`` (cycled), with their captions, as an image folder in
    ``out_dir`` (a resumed run reuses what is there)."""
    os.makedirs(out_dir, exist_ok=True)
    for i in range(n):
        path = os.path.join(out_dir, f"prior-{i:04d}.png")
        if os.path.isfile(path):
            continue
        prompt = prompts[i % len(prompts)]
        pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
             generator=torch.Generator("cpu").manual_seed(seed + i)).images[0].save(path)
        with open(path[:-4] + ".txt", "w") as f:
            f.write(prompt)


def make_class_images(pipe, prompt: str, n: int, out_dir: str, size: int, seed: int, steps: int, guidance: float):
    """Prior-preservation images drawn by the base model for one class prompt (Ruiz et al. 2023, Sec. 3.3)."""
    draw_prior(pipe, [prompt], n, out_dir, size, seed, steps, guidance)


class CaptionOverride(torch.utils.data.Dataset):
    """A folder data set whose captions are replaced by one prompt (the DreamBooth instance prompt)."""

    def __init__(self, dataset, prompt: str):
        self.dataset, self.prompt = dataset, prompt
        self.items = [type(it)(it.path, prompt, it.extra) for it in dataset.items]

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return {**self.dataset[i], "caption": self.prompt}


def add_lora(model: nn.Module, rank: int, alpha: float | None, targets: str):
    from peft import LoraConfig

    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                                 target_modules=[t.strip() for t in targets.split(",") if t.strip()]))


def add_text_lora(te: nn.Module, rank: int, alpha: float | None):
    from peft import LoraConfig, get_peft_model

    te.requires_grad_(False)
    return get_peft_model(te, LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                                         target_modules=TEXT_LORA_TARGETS.split(",")))


def make_step_fn(cache, scaling: float, caption_dropout: float, tokenizer, captions: list[str],
                 is_prior: torch.Tensor, prior_weight: float, train_te: bool, shuffle: common.SummaryShuffle | None = None):
    from latentgen.cache import sample_latents
    from latentgen.diffusion import diffusion_loss
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
        unet = model["unet"]
        prior = is_prior[batch["index"].cpu()]
        if not prior.any() or prior.all():
            loss = diffusion_loss(unet, latents, emb, ctx.generator)
            return {"loss": loss * (prior_weight if prior.all() else 1.0)}
        inst = diffusion_loss(unet, latents[~prior], emb[~prior.to(emb.device)], ctx.generator)
        pri = diffusion_loss(unet, latents[prior], emb[prior.to(emb.device)], ctx.generator)
        return {"loss": inst + prior_weight * pri, "instance_loss": inst, "prior_loss": pri}

    return step_fn


class IndexedLatents(torch.utils.data.Dataset):
    def __init__(self, cache):
        from latentgen.cache import LatentDataset

        self.inner = LatentDataset(cache)

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return {**self.inner[i], "index": i}


def main(argv=None) -> dict:
    args = parse_args(argv)
    from latentgen.cache import cache_captions, load_or_build_cache
    from latentgen.data.folder import ImageCaptionDataset
    from latentgen.pipeline import LatentGenPipeline
    from latentgen.training import Trainer

    pipe = load_base(args.model)
    if args.text_encoder:
        swap_text_encoder(pipe, args.text_encoder)
    unet, vae, te, tok = pipe.unet, pipe.vae.eval(), pipe.text_encoder.eval(), pipe.tokenizer
    size = pipe.default_size()[0]
    data = ImageCaptionDataset(args.data, size=size)
    if args.instance_prompt:
        data = CaptionOverride(data, args.instance_prompt)
    share, new_words = warn_new_words(tok, [it.caption for it in data.items])
    prior_dir = os.path.join(args.out, "prior_images")
    if args.prior == "on" or args.tune_decoder != "off":  # the decoder's prior too: drawn once, kept
        prompts = prior_prompts([it.caption for it in data.items], new_words) or [""]  # "": unconditional
        draw_prior(pipe, prompts, len(data.items),
                   prior_dir, size, args.seed or 0, args.val_steps, args.val_guidance)
    codec = tune_decoder(args, pipe, data, prior_dir)
    folders = [data]
    if args.prior == "on":
        folders.append(ImageCaptionDataset([prior_dir], size=size))
    if args.class_prompt:
        class_dir = os.path.join(args.out, "class_images")
        make_class_images(pipe, args.class_prompt, args.num_class_images, class_dir, size, args.seed or 0,
                          args.val_steps, args.val_guidance)
        folders.append(ImageCaptionDataset([class_dir], size=size))
    dataset = torch.utils.data.ConcatDataset(folders) if len(folders) > 1 else data
    dataset.items = [it for d in folders for it in d.items]
    captions_all = [it.caption for it in dataset.items]
    is_prior = torch.tensor([i >= len(data) for i in range(len(dataset))])

    cache = load_or_build_cache(dataset, vae, tok, te, os.path.join(args.out, "cache"), size)
    distinct = cache_captions(captions_all)  # the cache's caption ids index this list
    shuffle = None
    if args.shuffle_summary:
        shuffle = common.SummaryShuffle(tok, distinct, cache["embeddings"], args.shuffle_summary, args.seed or 0,
                                        args.shuffle_summary_multi)
    lora = args.lora_rank > 0
    if lora:
        add_lora(unet, args.lora_rank, args.lora_alpha, args.lora_targets)
    parts = {"unet": unet}
    if args.train_text_encoder:
        te = add_text_lora(te, args.lora_rank, args.lora_alpha) if lora else te.requires_grad_(True)
        parts["text_encoder"] = te
    model = nn.ModuleDict(parts)

    cfg = common.train_config(args, max_steps=1000, batch_size=8, lr=1e-4 if lora else 2e-5,
                              checkpoint_every=200, validate_every=200, seed=0)
    run = {"trainer": "finetune", "base": os.path.abspath(args.model), "lora_rank": args.lora_rank,
           "lora_alpha": args.lora_alpha, "lora_targets": args.lora_targets,
           "train_text_encoder": args.train_text_encoder, "instance_prompt": args.instance_prompt,
           "class_prompt": args.class_prompt, "examples": len(dataset), "new_word_share": round(share, 3),
           "lr": cfg.lr, "batch_size": cfg.batch_size, "decoder": codec,
           "text_encoder": args.text_encoder and os.path.abspath(args.text_encoder),
           # a resume with other settings is refused, by name; the key only when on, so older runs resume
           **common.shuffle_settings(args)}

    def validate(trainer, m, step):
        if not args.val_prompt:
            return {}
        from latentgen.eval.grid import image_grid

        vpipe = LatentGenPipeline(vae=vae, text_encoder=m["text_encoder"] if "text_encoder" in m else te,
                                  tokenizer=tok, unet=m["unet"], scheduler=pipe.scheduler)
        vpipe.set_progress_bar_config(disable=True)
        imgs = vpipe(args.val_prompt, num_inference_steps=args.val_steps, guidance_scale=args.val_guidance,
                     generator=torch.Generator().manual_seed(0)).images
        trainer.log_images("validation", image_grid(imgs, args.val_prompt))
        return {}

    trainer = Trainer(cfg, model, IndexedLatents(cache),
                      make_step_fn(cache, float(vae.config.scaling_factor), args.caption_dropout, tok, distinct,
                                   is_prior, args.prior_loss_weight, args.train_text_encoder, shuffle),
                      frozen={} if args.train_text_encoder else {"text_encoder": te},
                      validate_fn=validate, run_config=run)
    model = trainer.fit()
    if not trainer.finished or not trainer.is_main:
        return {"finished": trainer.finished, "step": trainer.step}
    save_result(args, pipe, model, lora, codec["tuned"])
    atomic_write_text(os.path.join(args.out, "finetune.json"), json.dumps(run, indent=2))
    print(f"saved to {args.out}")
    return {"finished": True, "step": trainer.step, "out": args.out, "lora": lora}


def save_result(args, pipe, model: nn.ModuleDict, lora: bool, decoder_tuned: bool = False):
    """LoRA: diffusers-format LoRA weights at the top of --out; full: a complete model folder.

    With ``--text-encoder`` or a tuned decoder a LoRA run also writes the base model with that text encoder
    and VAE at --out, so ``from_pretrained(out)`` then ``load_lora_weights(out)`` gives the fine-tuned model."""
    from latentgen.pipeline import LatentGenPipeline

    if lora and (args.text_encoder or decoder_tuned):
        base = load_base(args.model)  # untouched by the adapters trained in place
        if args.text_encoder:
            swap_text_encoder(base, args.text_encoder)
        base.register_modules(vae=pipe.vae)
        base.save_pretrained(args.out, safe_serialization=True)
        _copy_extras(args)
    if lora:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model["unet"]))
        te_layers = None
        if "text_encoder" in model:  # peft's wrapper prefixes its names; the loaders want the model's own
            te_sd = get_peft_model_state_dict(model["text_encoder"])
            te_layers = convert_state_dict_to_diffusers(
                {k.removeprefix(PEFT_PREFIX): v for k, v in te_sd.items()})
        LatentGenPipeline.save_lora_weights(args.out, unet_lora_layers=unet_layers,
                                            text_encoder_lora_layers=te_layers, safe_serialization=True)
        return
    te = model["text_encoder"] if "text_encoder" in model else pipe.text_encoder
    out = LatentGenPipeline(vae=pipe.vae, text_encoder=te, tokenizer=pipe.tokenizer, unet=model["unet"],
                            scheduler=pipe.scheduler)
    out.save_pretrained(args.out, safe_serialization=True)
    _copy_extras(args)


def _copy_extras(args):
    """The CLIP scorer (of --text-encoder when it has one), the base's model card and the parts' preset
    configs (``latentgen_config.json``: fine-tuning changes weights, not architectures)."""
    from latentgen.models.presets import copy_config

    for part in ("unet", "vae", "text_encoder"):
        base = args.text_encoder if part == "text_encoder" and args.text_encoder else args.model
        copy_config(os.path.join(base, part), os.path.join(args.out, part))
    for extra in ("clip", "README.md"):
        src = os.path.join(args.text_encoder if extra == "clip" and args.text_encoder
                           and os.path.isdir(os.path.join(args.text_encoder, "clip")) else args.model, extra)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(args.out, extra), dirs_exist_ok=True)
        elif os.path.isfile(src):
            shutil.copy(src, os.path.join(args.out, extra))


if __name__ == "__main__":
    main()
