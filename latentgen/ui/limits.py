"""What the server enforces whatever a client sends: exposure, training caps, uploads, data folders, paths.

Gradio's ``api_visibility="private"`` only hides an event from the API docs and from
``gradio_client``; anyone who can load the page can still call it over HTTP (the page does),
so every bound here is checked in the handler itself.
"""

from __future__ import annotations

import ipaddress


# ---------------------------------------------------------------- exposure
def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    h = (host or "").strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def exposure(host: str, share: bool) -> str | None:
    """How the app would be reachable from other machines, or None (loopback, no share link)."""
    if share:
        return "--share publishes the app on a public gradio.live link"
    if not is_loopback(host):
        return f"--host {host or '(all interfaces)'} makes the app reachable from other machines"
    return None


def check_exposure(host: str, share: bool, auth, insecure_no_auth: bool) -> str | None:
    """A ValueError when the app would be reachable from elsewhere without a password; the warning
    to print when the operator accepted that with ``--insecure-no-auth``; else None."""
    how = exposure(host, share)
    if how is None or auth is not None:
        return None
    if not insecure_no_auth:
        raise ValueError(
            f"refusing to start: {how} without a password, and anyone who reaches it can generate images "
            "and start training runs: add --auth USER:PASS (or --insecure-no-auth to run it open anyway)"
        )
    return (
        f"WARNING: {how} WITHOUT A PASSWORD (--insecure-no-auth): anyone who reaches it can generate "
        "images and start training runs; use --auth USER:PASS"
    )
