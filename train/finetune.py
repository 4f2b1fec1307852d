"""``python -m train.finetune``: ``latentgen train finetune`` (:mod:`latentgen.train.finetune`)."""

from latentgen.lora import add_lora  # noqa: F401  (train.distill imports it from here)
from latentgen.train.finetune import main

if __name__ == "__main__":
    main()
