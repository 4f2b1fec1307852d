"""Build the page and serve it: loopback by default, an optional password, a bounded queue.

``serve(AppConfig(...))`` is what ``latentgen app`` runs; tests and the load benchmark
call it with ``block=False`` to get the running server's URL. ``AppConfig`` refuses to
expose the app (``--share``, a non-loopback ``--host``) without ``--auth`` unless
``insecure_no_auth`` is set; a blocking ``serve`` stops its training runs on SIGTERM.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from latentgen.ui.api import build_api
from latentgen.ui.generation import MAX_COST, REQUEST_TIMEOUT_S, Generator
from latentgen.ui.jobs import JobManager
from latentgen.ui.limits import (
    MAX_QUEUE_SIZE,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_FILES,
    check_data_root,
    check_exposure,
    hide_paths,
)
from latentgen.ui.page import build_edit_tab, build_generate_tab, model_defaults
from latentgen.ui.registry import BUNDLED_DIR, ModelRegistry
from latentgen.ui.streaming import Sessions
from latentgen.ui.training_tab import DISTILL, FINETUNE, TabLimits, build_training_tab

log = logging.getLogger("latentgen.ui")
CSS = "#gallery {min-height: 260px} footer {display: none !important}"


@dataclass(frozen=True)
class AppConfig:
    models_dir: str = "./models"
    model: str | None = None  # None: the bundled default, when installed
    host: str = "127.0.0.1"
    port: int = 7860
    auth: tuple[str, str] | None = None
    share: bool = False
    concurrency: int = 1
    bundled_dir: str = str(BUNDLED_DIR)  # bundled models: default/ and default-4step/
    max_loaded: int = 2
    queue_size: int = 256
    insecure_no_auth: bool = False  # allow --share / a public --host without --auth (a loud warning)
    data_dir: str = "./data"  # the only place "Image folder on the server" may point into
    training: bool = True  # False (--no-training): no training tabs, training handlers refused
    max_upload_files: int = MAX_UPLOAD_FILES  # per training run
    max_upload_bytes: int = MAX_UPLOAD_BYTES  # per training run (and per file, Gradio's max_file_size)
    max_cost: float = MAX_COST  # steps x batch x area / native area, per generation request
    request_timeout_s: float = REQUEST_TIMEOUT_S  # a generation request is cancelled after this

    def __post_init__(self):
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {self.concurrency}")
        if not 1 <= self.queue_size <= MAX_QUEUE_SIZE:
            raise ValueError(f"--queue-size must be from 1 to {MAX_QUEUE_SIZE:,}, got {self.queue_size}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be from 0 to 65535, got {self.port}")
        if self.auth is not None and (len(self.auth) != 2 or not self.auth[0] or not self.auth[1]):
            raise ValueError("--auth must be user:password, both non-empty")
        check_exposure(self.host, self.share, self.auth, self.insecure_no_auth)
        check_data_root(self.data_dir)
        if not (self.max_cost > 0 and self.request_timeout_s > 0):
            raise ValueError("max_cost and request_timeout_s must be > 0")
        if self.max_upload_files < 1 or self.max_upload_bytes < 1:
            raise ValueError("max_upload_files and max_upload_bytes must be >= 1")


@dataclass
class App:
    """What the handlers share; ``demo`` is the Gradio page."""

    config: AppConfig
    registry: ModelRegistry
    generator: Generator
    jobs: JobManager
    demo: gr.Blocks
    startup_message: str

    def close(self):
        self.jobs.shutdown()
        self.demo.close()
        shutil.rmtree(self.generator.out_dir, ignore_errors=True)


def startup_message(registry: ModelRegistry) -> tuple[str, bool]:
    """(what the console and the page say about the model in use, whether all went well).

    The default model is loaded now, so the first request does not wait for it; one that
    fails to load is skipped (``registry.mark_broken``) for the next loadable one, and the
    message says so."""
    skipped = []
    while (default := registry.default_choice()) is not None:
        try:
            registry.load(default)
            break
        except Exception as e:
            log.warning("could not load %s: %s", default, e)
            registry.mark_broken(default)
            skipped.append(f"**{default}** ({hide_paths(str(e))[:300]})")
    note = f"The model {', '.join(skipped)} could not be loaded. " if skipped else ""
    if default is None:
        return note + registry.no_model_message(), False
    loaded = f"Using **{default}** instead" if skipped else f"Model **{default}** loaded"
    return f"{note}{loaded}. Models folder: `{registry.models_dir.name}`.", not skipped


def build_app(config: AppConfig) -> App:
    if config.model is not None and not Path(config.model).expanduser().is_dir():
        raise FileNotFoundError(
            f"--model {config.model}: no such folder (give a model folder with "
            "model_index.json, or leave --model out to use the bundled model)"
        )
    registry = ModelRegistry(
        config.models_dir, config.model, config.bundled_dir, max_loaded=config.max_loaded
    )
    generator = Generator(registry, max_cost=config.max_cost, timeout_s=config.request_timeout_s)
    data_root = check_data_root(config.data_dir)
    jobs = JobManager(registry.models_dir, enabled=config.training, roots={data_root.name: data_root})
    removed = jobs.clean_uploads()
    if removed:
        log.info("removed stale uploads of %s", ", ".join(removed))
    message, ok = startup_message(registry)
    sessions = Sessions()
    defaults = model_defaults(registry, registry.default_choice())
    with gr.Blocks(title="latentgen", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# latentgen")
        gr.Markdown(message if ok else f"⚠️ {message}", elem_id="banner")
        with gr.Tabs():
            with gr.Tab("Generate"):
                gen_tab = build_generate_tab(registry, generator, sessions, defaults)
            with gr.Tab("Edit"):
                edit_tab = build_edit_tab(registry, generator, sessions, defaults)
            if config.training:
                build_training_tabs(config, registry, jobs, [gen_tab["model"], edit_tab["model"]], data_root)
        build_api(registry, generator, defaults, registry.default_choice())
    demo.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)
    return App(config, registry, generator, jobs, demo, message)


def build_training_tabs(config: AppConfig, registry, jobs, model_lists, data_root: Path):
    limits = TabLimits(data_root, config.max_upload_files, config.max_upload_bytes)
    for spec in (FINETUNE, DISTILL):
        with gr.Tab(spec.title):
            build_training_tab(spec, registry, jobs, model_lists, limits)


def stop_on_sigterm(app: App):
    """SIGTERM (``kill``, a service manager) stops the training runs (each writes a checkpoint),
    then the server, and exits with status 0; only from the main thread, where signals land."""
    if threading.current_thread() is not threading.main_thread():
        return

    def on_term(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the shutdown short
        print("SIGTERM: stopping the training runs (each writes a checkpoint), then the server", flush=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)


def serve(config: AppConfig, block: bool = True) -> App:
    """Build and launch; with ``block=False`` return at once (``app.demo.local_url`` is the address)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    warning = check_exposure(config.host, config.share, config.auth, config.insecure_no_auth)
    app = build_app(config)
    print(app.startup_message.replace("**", "").replace("`", ""), flush=True)
    if warning:
        print(f"\n{'!' * 78}\n{warning}\n{'!' * 78}\n", flush=True)
    atexit.register(app.jobs.shutdown)
    app.demo.launch(
        server_name=config.host,
        server_port=config.port,
        auth=config.auth,
        share=bool(config.share),
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
        show_error=False,
        css=CSS,
        footer_links=["api"],
        auth_message="latentgen: sign in with the --auth user and password",
        max_file_size=config.max_upload_bytes,
    )
    print(
        f"latentgen is running on {app.demo.local_url}"
        + (f" and {app.demo.share_url}" if app.demo.share_url else ""),
        flush=True,
    )
    if block:
        stop_on_sigterm(app)
        try:
            app.demo.block_thread()
        finally:
            app.jobs.shutdown()
            app.demo.close()
    return app
