"""latentgen: text-to-image latent diffusion trained from scratch.

`from latentgen import LatentGenPipeline` is the Python API; the heavy imports
happen on first use so that `latentgen --help` stays fast.
"""

__version__ = "0.1.0"

__all__ = ["LatentGenPipeline", "__version__"]


def __getattr__(name):
    if name == "LatentGenPipeline":
        from latentgen.pipeline import LatentGenPipeline

        return LatentGenPipeline
    raise AttributeError(f"module 'latentgen' has no attribute {name!r}")
