"""``python -m train.distill``: the same as ``latentgen train distill`` (:mod:`latentgen.train.distill`)."""

from latentgen.train.distill import main

if __name__ == "__main__":
    main()
