"""``python -m train.distill``: the same as ``latentgen train distill`` (:mod:`latentgen.train.distill`)."""

from latentgen.train.distill import GUIDANCE_MAX, main  # noqa: F401  (train.recipe reads GUIDANCE_MAX)

if __name__ == "__main__":
    main()
