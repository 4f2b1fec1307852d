"""The latentgen browser app from a source checkout: ``python app.py [flags]`` = ``latentgen app [flags]``."""

from latentgen.ui.app import MAX_QUEUE_SIZE, main, parse_args

__all__ = ["MAX_QUEUE_SIZE", "main", "parse_args"]

if __name__ == "__main__":
    main()
