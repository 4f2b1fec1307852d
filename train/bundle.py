"""``python -m train.bundle``: the same as ``latentgen train bundle`` (:mod:`latentgen.train.bundle`)."""

from latentgen.train.bundle import main

if __name__ == "__main__":
    main()
