"""A generation request run in a worker thread, streamed to the page step by step, cancellable.

``stream`` is the generator behind the Generate and Edit buttons: it yields the status
line (with a progress bar), previews of the model's current estimate, and at the end the
PNGs and the seed used. ``Sessions`` holds the cancel flags of each browser session, so
the Cancel button stops that session's requests and no one else's.
"""

from __future__ import annotations

import html
import queue
import threading
import time
from dataclasses import dataclass, field

import gradio as gr

from latentgen.ui.generation import Cancelled, Generator


@dataclass
class Sessions:
    """Cancel flags of the requests running for each browser session."""

    flags: dict[str, set[threading.Event]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, session: str, event: threading.Event):
        with self.lock:
            self.flags.setdefault(session, set()).add(event)

    def remove(self, session: str, event: threading.Event):
        with self.lock:
            events = self.flags.get(session, set())
            events.discard(event)
            if not events:
                self.flags.pop(session, None)

    def cancel(self, session: str) -> int:
        with self.lock:
            events = list(self.flags.get(session, ()))
        for e in events:
            e.set()
        return len(events)


def canceller(sessions: Sessions):
    """The Cancel button's handler: stops this browser session's running requests."""

    def cancel(request: gr.Request):
        return status_html("Cancelled." if sessions.cancel(request.session_hash) else "Nothing to cancel.")

    return cancel


def status_html(text: str, done: int | None = None, total: int | None = None) -> str:
    """The status line above the gallery, with a progress bar while a request runs."""
    bar = ""
    if total:
        pct = round(100 * done / total)
        bar = (
            f"<div style='height:8px;border-radius:4px;background:var(--neutral-200,#e5e7eb)'>"
            f"<div style='width:{pct}%;height:8px;border-radius:4px;"
            f"background:var(--color-accent,#f97316)'></div></div>"
        )
    return f"<div id='status-line'>{bar}<div>{html.escape(text)}</div></div>"


def stream(gen: Generator, sessions: Sessions, req, request: gr.Request | None):
    """Run ``req`` in a worker thread; yield (gallery, seed, files, status) as it goes.

    While it runs, the status line shows step n of N and the gallery the model's current
    estimate of the first image (every ``gen.preview_every_s`` seconds)."""
    gen.check(req)  # a bad model or size is an error now, before the page shows any progress
    cancel, events = threading.Event(), queue.Queue()
    session = getattr(request, "session_hash", None) or "api"
    sessions.add(session, cancel)
    box = {}

    def work():
        try:
            box["result"] = gen.run(req, on_step=lambda i, n, img: events.put((i, n, img)), cancel=cancel)
        except BaseException as e:  # handed to the generator below
            box["error"] = e
        events.put(None)

    threading.Thread(target=work, daemon=True, name="latentgen-generate").start()
    try:
        yield gr.skip(), gr.skip(), gr.skip(), status_html(f"Starting (seed {req.seed})...", 0, 1)
        last = 0.0
        while (item := events.get()) is not None:
            done, total, preview = item
            if preview is None and time.monotonic() - last < 0.2:
                continue
            last = time.monotonic()
            text = status_html(f"Step {done} of {total} (seed {req.seed})", done, total)
            yield ([preview] if preview is not None else gr.skip()), gr.skip(), gr.skip(), text
        if "error" in box:
            if isinstance(box["error"], Cancelled):
                yield gr.skip(), gr.skip(), gr.skip(), status_html(f"Cancelled ({box['error']}).")
                return
            raise box["error"]
        res = box["result"]
        text = (
            f"{len(res.paths)} image(s) in {res.seconds:.1f} s; seed {res.seed}"
            + (f" to {res.seed + len(res.paths) - 1} (one per image)" if len(res.paths) > 1 else "")
            + ". The PNGs hold their settings: drop one on 'Read settings from a PNG'."
            + (f" {res.warning}" if res.warning else "")
        )
        yield res.paths, str(res.seed), res.paths, status_html(text)
    finally:
        cancel.set()  # the page went away or the request was cancelled: stop the worker
        sessions.remove(session, cancel)
