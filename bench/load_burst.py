"""The burst phase of ``bench.load``: many ``/generate`` requests at the same moment against a bounded queue.

Each request goes over the app's plain HTTP API, as ``curl`` would: ``POST
/gradio_api/call/generate`` (answered at once with an event id, or with HTTP 503 and the
server's "Queue is full" message when the queue already holds ``--queue-size`` requests),
then ``GET /gradio_api/call/generate/<event id>``, an event stream that ends with
``complete`` (the images and the seed) or ``error``. ``gradio_client`` turns the same 503
into ``QueueError("Queue is full! Please try again.")`` and hides the server's message,
hence plain HTTP here.

Every request is bounded (``timeout`` per request, one deadline for the burst) and ends in
exactly one class: ``served``, ``rejected`` (HTTP 503 with the queue-full message),
``error`` (any other answer), ``hung`` (a timeout) or ``missing`` (no answer by the deadline).
"""

from __future__ import annotations

import json
import threading
import time

import httpx

QUEUE_FULL = "Queue is full"
OUTCOMES = ("served", "rejected", "error", "hung", "missing")


def endpoint_defaults(http: httpx.Client, url: str, api: str = "/generate") -> dict:
    """The endpoint's parameters in order, each with the app's default (the served model's settings)."""
    info = http.get(f"{url}/gradio_api/info").raise_for_status().json()
    return {p["parameter_name"]: p.get("parameter_default") for p in info["named_endpoints"][api]["parameters"]}


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except (ValueError, AttributeError):
        return response.text[:300]


def _stream_result(http: httpx.Client, url: str, timeout: float, t0: float) -> tuple[str, object]:
    """("complete" | "error", payload) from the event stream; TimeoutError past ``timeout``."""
    event = None
    with http.stream("GET", url, timeout=timeout) as stream:
        for line in stream.iter_lines():
            if time.perf_counter() - t0 > timeout:  # heartbeats keep the stream alive; the clock does not
                raise TimeoutError(f"no result after {timeout:.0f} s")
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                return event, json.loads(line.split(":", 1)[1])
    return "error", "the event stream ended without a result"


def call(http: httpx.Client, url: str, defaults: dict, timeout: float, **values) -> dict:
    """One ``/generate`` request (``values`` override the app's defaults) as a classified record."""
    data = [values.get(name, default) for name, default in defaults.items()]
    rec = {"seed": values.get("seed"), "outcome": "error", "message": None, "answered_s": None}
    t0 = time.perf_counter()
    try:
        r = http.post(f"{url}/gradio_api/call/generate", json={"data": data}, timeout=timeout)
        rec["answered_s"] = time.perf_counter() - t0
        if r.status_code != 200:
            detail = _detail(r)
            rejected = r.status_code == 503 and QUEUE_FULL.lower() in detail.lower()
            rec.update(outcome="rejected" if rejected else "error", message=f"HTTP {r.status_code}: {detail}")
        else:
            kind, payload = _stream_result(
                http, f"{url}/gradio_api/call/generate/{r.json()['event_id']}", timeout, t0
            )
            ok = kind == "complete" and len(payload[0]) == 1 and payload[1] == values.get("seed")
            rec["outcome"] = "served" if ok else "error"
            rec["message"] = None if ok else f"{kind}: {json.dumps(payload)[:300]}"
    except (TimeoutError, httpx.TimeoutException) as e:
        rec.update(outcome="hung", message=f"{type(e).__name__}: {e}"[:300])
    except Exception as e:  # noqa: BLE001 -- any other failure is a result, not a crash of the benchmark
        rec.update(message=f"{type(e).__name__}: {e}"[:300])
    rec["seconds"] = time.perf_counter() - t0
    return rec


def run_burst(url: str, n: int, timeout: float, deadline_s: float, **values) -> dict:
    """``n`` requests released together (a barrier), then one more once all have ended."""
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    with httpx.Client(limits=limits, timeout=timeout) as http:
        defaults = endpoint_defaults(http, url)
        records: list[dict | None] = [None] * n
        gate = threading.Barrier(n)

        def one(i: int):
            try:
                gate.wait(timeout=120)
            except threading.BrokenBarrierError:  # sent anyway, a little later than the others
                pass
            records[i] = call(http, url, defaults, timeout, prompt=f"a blue square {i}", seed=i, **values)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        deadline = time.monotonic() + deadline_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        wall = time.perf_counter() - t0
        done = [r if r is not None else {"seed": i, "outcome": "missing", "message": None, "answered_s": None,
                                         "seconds": None} for i, r in enumerate(list(records))]
        final = call(http, url, defaults, timeout, prompt="a green triangle", seed=n, **values)
    return {"records": done, "wall_s": wall, "final": final}


def summarize_burst(result: dict, n: int, queue_size: int, percentile) -> dict:
    recs = result["records"]
    by = {k: [r for r in recs if r["outcome"] == k] for k in OUTCOMES}
    answered = [r["answered_s"] for r in by["rejected"]]
    served = [r["seconds"] for r in by["served"]]
    counts = {k: len(v) for k, v in by.items()}
    clean = (counts["rejected"] > 0 and counts["served"] >= min(n, queue_size)
             and counts["served"] + counts["rejected"] == n and result["final"]["outcome"] == "served")
    return {
        "burst": n,
        "queue_size": queue_size,
        **{f"burst_{k}": v for k, v in counts.items()},
        "burst_rejection_messages": sorted({r["message"] for r in by["rejected"]}),
        "burst_rejection_p50_s": percentile(answered, 50),
        "burst_rejection_p95_s": percentile(answered, 95),
        "burst_rejection_max_s": max(answered) if answered else None,
        "burst_served_p50_s": percentile(served, 50),
        "burst_served_p95_s": percentile(served, 95),
        "burst_served_max_s": max(served) if served else None,
        "burst_wall_s": result["wall_s"],
        "burst_other_errors": sorted({r["message"] for r in by["error"] + by["hung"] if r["message"]})[:5],
        "final_request": result["final"]["outcome"],
        "final_request_s": result["final"]["seconds"],
        "burst_clean": clean,
    }


def burst_rows(s: dict, fmt) -> list[tuple[str, str]]:
    """The burst table's rows (measure, value)."""
    messages = "; ".join(s["burst_rejection_messages"]) or "none"
    return [
        ("requests at once / app --queue-size", f"{s['burst']} / {s['queue_size']}"),
        ("model / steps / sampler / guidance",
         f"{s['model']} / {s['burst_steps']} / {s['sampler']} / {s['guidance']}"),
        ("served / rejected (queue full) / other error / hung / missing",
         " / ".join(str(s[f"burst_{k}"]) for k in OUTCOMES)),
        ("rejection message (HTTP status: server's detail)", messages),
        ("rejected answered in p50 / p95 / max (s)",
         " / ".join(fmt(s[f"burst_rejection_{q}_s"], 3) for q in ("p50", "p95", "max"))),
        ("served latency p50 / p95 / max (s)",
         " / ".join(fmt(s[f"burst_served_{q}_s"]) for q in ("p50", "p95", "max"))),
        ("burst wall time (s)", fmt(s["burst_wall_s"], 1)),
        ("one more request afterwards", f"{s['final_request']} in {fmt(s['final_request_s'])} s"),
        ("server alive afterwards / tracebacks in its log",
         f"{s['server_alive_after']} / {s['server_log_tracebacks']}"),
        ("every request served or cleanly refused, the server healthy after",
         str(s["burst_clean"] and s["server_alive_after"])),
    ]
