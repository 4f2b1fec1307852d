"""Train the conditional UNet in a frozen VAE's latent space, conditioned on a frozen text encoder.

    python -m train.unet --data data/shapes64 --data data/emoji64 \
        --vae runs/vae --text-encoder runs/clip --out runs/unet --preset small

The VAE latents (posterior mean and std) and the prompt embeddings are computed once and cached
(``latentgen/cache.py``); each step samples a latent, drops the caption to "" with probability
``--caption-dropout`` (what classifier-free guidance needs) and takes the v-prediction loss of
``latentgen/diffusion.py``. The result is a complete model folder in the diffusers layout
(``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``,
plus ``clip/`` when the text encoder folder has one, for scoring) with a model card.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import torch

from train import common

GRID_PROMPTS = [
    "a large red circle at center",
    "a small blue square at top left",
    "a large yellow triangle at bottom right",
    "a large green square at left and a small purple circle at right",
    "a large blue circle at top and a large orange square at bottom",
    "a small red triangle at top right and a large yellow circle at bottom left",
    "a large purple triangle at center",
    "a large orange circle at top left and a small green triangle at center and a small blue square at bottom",
]


def parse_args(argv=None):
    from latentgen.models.unet import PRESETS

    p = common.base_parser(__doc__.splitlines()[0], presets=PRESETS, default_preset="small")
    p.add_argument("--vae", metavar="DIR", help="folder with vae/ (a VAE run or a model folder); default: --model")
    p.add_argument("--text-encoder", metavar="DIR",
                   help="folder with text_encoder/ and tokenizer/ (a CLIP run or a model folder); default: --model")
    p.add_argument("--size", type=int, default=64, help="image side the data is prepared at")
    p.add_argument("--caption-dropout", type=float, default=0.1, help="share of captions replaced by ''")
    p.add_argument("--min-snr-gamma", type=float, default=None, help="min-SNR loss weighting (e.g. 5); off by default")
    p.add_argument("--val-steps", type=int, default=25, help="sampling steps for validation images")
    p.add_argument("--val-guidance", type=float, default=4.0)
    p.add_argument("--val-adherence", type=int, default=0,
                   help="shapes prompts scored by the checker at each validation (0: off)")
    common.add_shuffle_summary(p)
    args = p.parse_args(argv)
    common.check_shuffle_summary(p, args)
    return args


def load_components(args):
    """The frozen VAE, tokenizer and text encoder, with clear errors for a folder that lacks them."""
    from diffusers import AutoencoderKL

    vae_dir = args.vae or args.model
    te_dir = args.text_encoder or args.model
    if not vae_dir or not te_dir:
        raise SystemExit("error: give --vae DIR and --text-encoder DIR (or --model DIR holding vae/, "
                         "text_encoder/ and tokenizer/): train them with train.vae and train.clip")
    vae_path = os.path.join(vae_dir, "vae") if os.path.isdir(os.path.join(vae_dir, "vae")) else vae_dir
    if not os.path.exists(os.path.join(vae_path, "config.json")):
        raise SystemExit(f"error: {vae_path}/config.json is missing: --vae needs a VAE folder (train.vae's --out)")
    tok, te = common.load_text_encoder(te_dir, "--text-encoder" if args.text_encoder else "--model")
    vae = AutoencoderKL.from_pretrained(vae_path, use_safetensors=True)
    return vae, tok, te, te_dir


def make_step_fn(cache, scaling_factor: float, caption_dropout: float, min_snr_gamma: float | None,
                 shuffle: common.SummaryShuffle | None = None):
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


def make_validate_fn(args, vae, tok, te):
    def validate(trainer, unet, step):
        from latentgen.eval.grid import image_grid

        pipe = build_pipeline(unet, vae, tok, te)
        pipe.set_progress_bar_config(disable=True)
        g = torch.Generator("cpu").manual_seed(0)
        images = pipe(GRID_PROMPTS, num_inference_steps=args.val_steps, guidance_scale=args.val_guidance,
                      generator=g).images
        trainer.log_images("samples", image_grid(images, GRID_PROMPTS))
        if not args.val_adherence:
            return {}
        from latentgen.eval.adherence import evaluate_shapes

        res = evaluate_shapes(pipe, n=args.val_adherence, steps=args.val_steps, guidance=args.val_guidance, seed=0)
        return {"adherence": res["all"]["full_prompt_accuracy"]}

    return validate


def write_model_card(out: str, args, run: dict):
    lines = ["---", "sampler: ddim", f"num_inference_steps: {args.val_steps}",
             f"guidance_scale: {args.val_guidance}", "---", "",
             "# latentgen model", "",
             f"A text-to-image latent diffusion model trained with `python -m train.unet` (preset `{args.preset}`).",
             "", "## Training", "", "```json", json.dumps(run, indent=2), "```", ""]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


def main(argv=None) -> dict:
    args = parse_args(argv)
    from latentgen.cache import LatentDataset, cache_captions, load_or_build_cache
    from latentgen.data.folder import ImageCaptionDataset
    from latentgen.models.presets import copy_config, save_config
    from latentgen.models.unet import build_unet, get_unet_config
    from latentgen.training import Trainer

    vae, tok, te, te_dir = load_components(args)
    data = ImageCaptionDataset(args.data, size=args.size)
    cache = load_or_build_cache(data, vae.eval(), tok, te.eval(), os.path.join(args.out, "cache"), args.size)
    latent = cache["mean"].shape[1:]  # (C, h, w)
    ucfg = dataclasses.replace(get_unet_config(args.preset), in_channels=latent[0], out_channels=latent[0],
                               sample_size=latent[1], cross_attention_dim=te.config.hidden_size)
    scaling = float(vae.config.scaling_factor)
    cfg = common.train_config(args, max_steps=20_000, batch_size=32, lr=2e-4, warmup_steps=500,
                              ema_decay=0.999, checkpoint_every=1000, validate_every=2000, seed=0)
    run = {"trainer": "unet", "preset": args.preset, "unet": dataclasses.asdict(ucfg), "size": args.size,
           "caption_dropout": args.caption_dropout, "min_snr_gamma": args.min_snr_gamma,
           "scaling_factor": scaling, "examples": len(data),
           **common.shuffle_settings(args)}  # the keys only when on, so runs from before the flag resume
    shuffle = None
    if args.shuffle_summary:
        shuffle = common.SummaryShuffle(tok, cache_captions(it.caption for it in data.items), cache["embeddings"],
                                        args.shuffle_summary, args.seed or 0, args.shuffle_summary_multi)
    trainer = Trainer(cfg, build_unet(ucfg), LatentDataset(cache),
                      make_step_fn(cache, scaling, args.caption_dropout, args.min_snr_gamma, shuffle),
                      validate_fn=make_validate_fn(args, vae, tok, te), run_config=run)
    unet = trainer.fit()
    if not trainer.finished or not trainer.is_main:
        return {"finished": trainer.finished, "step": trainer.step}
    pipe = build_pipeline(unet, vae, tok, te)
    pipe.save_pretrained(args.out, safe_serialization=True)
    save_config(ucfg, os.path.join(args.out, "unet"))
    vae_dir = args.vae or args.model  # its latentgen_config.json (the VAE preset) goes along, as train.vae wrote it
    copy_config(os.path.join(vae_dir, "vae") if os.path.isdir(os.path.join(vae_dir, "vae")) else vae_dir,
                os.path.join(args.out, "vae"))
    if os.path.isdir(os.path.join(te_dir, "clip")):
        shutil.copytree(os.path.join(te_dir, "clip"), os.path.join(args.out, "clip"), dirs_exist_ok=True)
    write_model_card(args.out, args, run)
    print(f"model saved to {args.out}")
    return {"finished": True, "step": trainer.step, "out": args.out}


if __name__ == "__main__":
    main()
