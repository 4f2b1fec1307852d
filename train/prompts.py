"""``python -m train.prompts``: the same as ``latentgen train prompts`` (:mod:`latentgen.train.prompts`)."""

from latentgen.train.prompts import main

if __name__ == "__main__":
    main()
