"""Every handler's errors become a message in the page (``gr.Error``), and the server stays up.

``ValueError``/``OSError`` from our code and the pipeline already read as "what is wrong,
how to fix it" and are shown as they are; anything else is logged with its traceback and
shown as a short internal error. Absolute server paths in either are cut to their last
part (``hide_paths``): the page never shows where the server keeps its files.
"""

from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

from latentgen.ui.limits import hide_paths

log = logging.getLogger("latentgen.ui")
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def to_gr_error(e: BaseException) -> gr.Error:
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, USER_ERRORS):
        return gr.Error(hide_paths(str(e)), print_exception=False)
    log.exception("unexpected error in a request", exc_info=e)
    return gr.Error(
        f"internal error ({type(e).__name__}: {hide_paths(str(e))[:500]}); the server log has the details",
        print_exception=False,
    )


def readable_errors(fn):
    """Wrap a Gradio handler (function or generator) so that errors reach the page as ``gr.Error``."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except GeneratorExit:
                raise
            except Exception as e:
                raise to_gr_error(e) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise to_gr_error(e) from None

    return wrapper


def input_image(**kwargs) -> gr.Image:
    """A ``gr.Image`` input whose unreadable upload (a text file called .png, a truncated JPEG) is a
    readable error in the page instead of Gradio's generic processing error.

    The instance's ``preprocess`` is wrapped (a subclass would make Gradio write a ``.pyi`` stub
    next to this file)."""
    image = gr.Image(**kwargs)
    original = image.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except Exception as e:
            name = getattr(payload, "orig_name", None) or "the uploaded file"
            raise gr.Error(
                f"could not read {name} as an image ({type(e).__name__}); "
                "upload a valid PNG, JPEG or WebP file",
                print_exception=False,
            ) from None

    image.preprocess = preprocess
    return image
