"""The latentgen browser app: ``latentgen app`` (or ``python app.py``), then open http://127.0.0.1:7860.

Generate (text to image), Edit (image to image), Fine-tune and Distill (background
training runs) on one page, and the same generation as an API (``/generate``, ``/edit``,
``/models``, ``/png_params``; see the README). Loopback only unless ``--host`` says
otherwise; no public share link unless ``--share``; either one needs ``--auth`` (or the
explicit ``--insecure-no-auth``). SIGTERM stops the training runs (each writes a
checkpoint), then the app.

Only the flags are read here; Gradio is imported when the server starts.
"""

from __future__ import annotations

import argparse
import os
import sys

from latentgen.ui.limits import MAX_QUEUE_SIZE

DESCRIPTION = __doc__.splitlines()[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The app's flags, on ``p`` (``python app.py``'s own parser, or ``latentgen app``)."""
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface; needs --auth)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--auth", metavar="USER:PASS", help="require this user and password for the page and API")
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (needs --auth)")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow --share or a non-loopback --host without --auth (anyone reaching it can train)")
    p.add_argument("--models-dir", default="./models", help="model folders offered in the app; runs go here")
    p.add_argument("--data-dir", default="./data",
                   help="the only folder whose subfolders the training tabs may read as 'Image folder on the server'")
    p.add_argument("--no-training", action="store_true", help="no Fine-tune / Distill tabs; training refused")
    p.add_argument("--model", help="model folder to start on (else latentgen/weights/default, if installed)")
    p.add_argument("--concurrency", type=int, default=1, help="generation requests run at the same time")
    p.add_argument("--queue-size", type=int, default=256, metavar="N",
                   help=f"requests that may wait in the queue (1 to {MAX_QUEUE_SIZE:,}); "
                        "one more is refused at once with 'Queue is full'")
    p.add_argument("--max-cost", type=float, default=400.0,
                   help="largest request in native-image-steps: steps x batch x width x height / native area")
    p.add_argument("--request-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="a generation request still running after this is cancelled with an error")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p)
    return p


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """The parsed flags checked (a ValueError naming the first bad one); ``--auth`` becomes ``(user, password)``."""
    if isinstance(args.auth, str):
        user, sep, password = args.auth.partition(":")
        if not (sep and user and password):
            raise ValueError("--auth must be USER:PASS (both non-empty), e.g. --auth alice:s3cret")
        args.auth = (user, password)
    if args.concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {args.concurrency}")
    if not 1 <= args.queue_size <= MAX_QUEUE_SIZE:
        raise ValueError(f"--queue-size must be from 1 to {MAX_QUEUE_SIZE:,}, got {args.queue_size}")
    if not (args.max_cost > 0 and args.request_timeout > 0):
        raise ValueError("--max-cost and --request-timeout must be > 0")
    if args.model is not None and not os.path.isdir(args.model):
        raise ValueError(f"--model {args.model}: no such folder (a model folder holds model_index.json)")
    return args


def parse_args(argv=None, prog: str | None = None) -> argparse.Namespace:
    p = build_parser(prog)
    args = p.parse_args(argv)
    try:
        return check_args(args)
    except ValueError as e:
        p.error(str(e))
        raise  # unreachable: p.error exits


def serve_args(args: argparse.Namespace, block: bool = True):
    """Start the app for checked flags (``check_args``); a refused setting or a taken port exits with its reason."""
    from latentgen.ui import AppConfig, serve

    try:
        config = AppConfig(
            models_dir=args.models_dir,
            model=args.model,
            host=args.host,
            port=args.port,
            auth=args.auth,
            share=args.share,
            concurrency=args.concurrency,
            queue_size=args.queue_size,
            insecure_no_auth=args.insecure_no_auth,
            data_dir=args.data_dir,
            training=not args.no_training,
            max_cost=args.max_cost,
            request_timeout_s=args.request_timeout,
        )
    except ValueError as e:  # e.g. a public --host without --auth
        sys.exit(f"error: {e}")
    try:
        return serve(config, block=block)
    except OSError as e:  # e.g. the port is taken
        sys.exit(f"error: could not start the server on {args.host}:{args.port}: {e} (try --port 7861)")


def main(argv=None, block: bool = True):
    return serve_args(parse_args(argv), block=block)


if __name__ == "__main__":
    main()
