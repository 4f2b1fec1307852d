"""The browser app (Gradio): Generate, Edit, Fine-tune and Distill tabs, and the generation API.

    from latentgen.ui import AppConfig, serve
    app = serve(AppConfig(models_dir="models"), block=False)   # app.demo.local_url

Parts: ``app`` (the ``latentgen app`` command line), ``registry`` (which model folders may be
used, cached loading), ``generation`` (validated requests to PNGs with their settings), ``jobs``
(training runs as background processes of the installed trainers), ``page`` and ``training_tab``
(the Gradio Blocks), ``server`` (launch), and what the server enforces whatever a client sends:
``limits`` (exposure, training caps, the data root, paths in messages), ``flags`` (the extra
trainer flags' allow-list), ``uploads``. Gradio is imported on first use of ``AppConfig``,
``serve``, ``build_app`` or ``App``, so ``latentgen app --help`` stays fast.
"""

__all__ = ["App", "AppConfig", "build_app", "serve"]


def __getattr__(name):
    if name in __all__:
        from latentgen.ui import server

        return getattr(server, name)
    raise AttributeError(f"module 'latentgen.ui' has no attribute {name!r}")
