"""``python -m train.vae``: the same as ``latentgen train vae`` (:mod:`latentgen.train.vae`)."""

from latentgen.train.vae import main

if __name__ == "__main__":
    main()
