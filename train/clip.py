"""``python -m train.clip``: the same as ``latentgen train clip`` (:mod:`latentgen.train.clip`)."""

from latentgen.train.clip import main

if __name__ == "__main__":
    main()
