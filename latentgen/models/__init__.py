"""Models: builders and named presets for the VAE, CLIP and UNet. No training code here."""
