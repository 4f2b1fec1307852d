"""``python -m train.unet``: the same as ``latentgen train unet`` (:mod:`latentgen.train.unet`)."""

from latentgen.train.unet import main

if __name__ == "__main__":
    main()
