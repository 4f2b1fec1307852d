"""``python -m train.finetune``: the same as ``latentgen train finetune`` (:mod:`latentgen.train.finetune`)."""

from latentgen.train.finetune import main

if __name__ == "__main__":
    main()
