"""A fine-tune's first step: the VAE's decoder tuned on the user's folder where the VAE reconstructs it
poorly (:mod:`latentgen.adapt`; the encoder is kept, so the latents the UNet knows keep their meaning)."""

from __future__ import annotations

import os

import torch


def tune_decoder(cfg, vae, data, prior_dir: str) -> dict:
    """Measure ``vae``'s round trip on the folder ``data``; below either floor, PSNR or PSNR on the pixels of
    detail (or with ``tune_decoder="on"``), tune its decoder in place on the folder and on the base model's
    own images in ``prior_dir``, as a run in ``<out>/decoder``. ``cfg``: a fine-tune's config
    (``tune_decoder``, ``decoder_steps``, ``decoder_lr`` and the loop's ``out``, ``seed``, ``resume``,
    ``progress``, ``mixed_precision``). Returns the report the run records: both PSNRs before (and after),
    whether it was tuned, for how many steps."""
    from latentgen.adapt import (
        DECODER_BATCH,
        DECODER_PSNR_FLOOR,
        EDGE_PSNR_FLOOR,
        Decoder,
        DecoderData,
        decoder_step,
        roundtrip,
    )
    from latentgen.data.folder import ImageCaptionDataset
    from latentgen.training import TrainConfig, Trainer

    vae.eval()
    pixels = torch.stack([data[i]["pixels"] for i in range(min(len(data.items), 256))])  # (N, 3, S, S)
    before = roundtrip(vae, pixels)
    said = f"{before['psnr']:.1f} dB ({before['edge_psnr']:.1f} dB on edges and small details)"
    report = {"psnr_before": round(before["psnr"], 2), "edge_psnr_before": round(before["edge_psnr"], 2),
              "tuned": False}
    below = [f"{floor:g} dB{on}" for key, floor, on in (("psnr", DECODER_PSNR_FLOOR, ""),
                                                         ("edge_psnr", EDGE_PSNR_FLOOR, " on details"))
             if before[key] < floor]  # the floors the folder is under
    if cfg.tune_decoder == "off" or (cfg.tune_decoder == "auto" and not below):
        print(f"codec: the VAE reconstructs the folder at {said}; its decoder is kept")
        return report
    print(f"codec: the VAE reconstructs the folder at {said}" + (
        f", below {' and '.join(below)}: it maps what it never saw onto what it knows" if below else "")
        + f"; tuning its decoder for {cfg.decoder_steps} steps")
    prior_set = ImageCaptionDataset([prior_dir], size=pixels.shape[-1], empty_captions=True)
    prior = torch.stack([prior_set[i]["pixels"] for i in range(len(prior_set.items))])  # (P, 3, S, S)
    loop = TrainConfig(out=os.path.join(cfg.out, "decoder"), max_steps=cfg.decoder_steps,
                       batch_size=DECODER_BATCH,
                       lr=cfg.decoder_lr, seed=cfg.seed, checkpoint_every=max(1, cfg.decoder_steps // 2),
                       log_every=10, resume=cfg.resume, progress=cfg.progress,
                       mixed_precision=cfg.mixed_precision)
    Trainer(loop, Decoder(vae), DecoderData(vae, pixels, prior), decoder_step,
            run_config={"trainer": "finetune-decoder", "prior_images": len(prior)}).fit()
    vae.eval()
    after = roundtrip(vae, pixels)
    print(f"codec: tuned decoder: {before['psnr']:.1f} -> {after['psnr']:.1f} dB on the folder "
          f"({before['edge_psnr']:.1f} -> {after['edge_psnr']:.1f} dB on details)")
    return {**report, "tuned": True, "psnr_after": round(after["psnr"], 2),
            "edge_psnr_after": round(after["edge_psnr"], 2), "steps": cfg.decoder_steps}
