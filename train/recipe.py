"""``python -m train.recipe``: the same as ``latentgen train recipe`` (:mod:`latentgen.train.recipe`)."""

from latentgen.train.recipe import main

if __name__ == "__main__":
    main()
