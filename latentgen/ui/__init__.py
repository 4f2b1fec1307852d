"""The browser app (Gradio): Generate, Edit, Fine-tune and Distill tabs, and the generation API.

    from latentgen.ui import AppConfig, serve
    app = serve(AppConfig(models_dir="models"), block=False)   # app.demo.local_url

Parts: ``registry`` (which model folders may be used, cached loading), ``generation``
(validated requests to PNGs with their settings), ``jobs`` (training runs as background
subprocesses), ``page`` and ``training_tab`` (the Gradio Blocks), ``server`` (launch), and
what the server enforces whatever a client sends: ``limits`` (exposure, training caps, the
data root, paths in messages), ``flags`` (the extra trainer flags' allow-list), ``uploads``.
"""

from latentgen.ui.server import App, AppConfig, build_app, serve

__all__ = ["App", "AppConfig", "build_app", "serve"]
