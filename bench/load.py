"""Load on the running app: many clients generating at once, then a burst past the queue's bound.

Starts ``python app.py`` as a subprocess on 127.0.0.1 (a tiny random model unless
``--model DIR``; ``--queue-size`` and ``--concurrency`` passed on). Phase 1: ``--clients``
threads, each with its own ``gradio_client.Client``, send ``--requests`` ``/generate`` calls
in all at the model card's sampler and guidance, with one deliberately bad request (a width
that is not a multiple of the VAE factor) mixed in. Phase 2 (``bench.load_burst``):
``--burst`` requests at the same moment at ``--burst-steps``, more than the queue holds;
each ends served, refused with "Queue is full", another error, hung or missing; then one
more request must be served. Bounded: every request has a timeout and each phase a
deadline. Reports completed and failed requests, p50/p95 latency, throughput, how fast the
refused ones were answered, and the server's peak memory (psutil, sampled; plus the
kernel's VmHWM of the server process where /proc has it).

    python -m bench.load                      # 64 requests, 16 clients, then 300 at once; tiny model
    python -m bench.load --model latentgen/weights/default --steps 25 --concurrency 1

Writes bench/results/load.json and bench/results/load.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.load_burst import burst_rows, endpoint_defaults, run_burst, summarize_burst

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model", help="model folder to serve (default: a tiny random model made for the run)")
    p.add_argument("--requests", type=int, default=64, help="good generation requests in all")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--steps", type=int, default=8, help="sampling steps per request")
    p.add_argument("--concurrency", type=int, default=1, help="the app's --concurrency")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds one request may take")
    p.add_argument("--deadline", type=float, default=900.0, help="seconds the whole load may take")
    p.add_argument("--queue-size", type=int, default=32, help="the app's --queue-size")
    p.add_argument("--burst", type=int, default=300, help="requests sent at the same moment (0: no burst)")
    p.add_argument("--burst-steps", type=int, default=4, help="sampling steps per burst request")
    p.add_argument("--burst-deadline", type=float, default=300.0, help="seconds the burst may take")
    p.add_argument("--out", default=str(RESULTS / "load"), help="results path without extension")
    args = p.parse_args(argv)
    if args.requests < 1 or args.clients < 1 or args.queue_size < 1 or args.burst < 0:
        p.error("--requests, --clients and --queue-size must be >= 1, --burst >= 0")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(folder: str) -> str:
    sys.path.insert(0, str(REPO))
    from tests.tiny_models import make_tiny_pipeline

    return make_tiny_pipeline(folder, name="tiny")


class MemoryWatch:
    """Peak resident memory of a process tree, sampled every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.05):
        import psutil

        self.proc, self.every, self.peak = psutil.Process(pid), every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def vm_hwm(pid: int) -> int | None:
    """The kernel's peak RSS of ``pid`` in bytes (Linux), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def start_server(model: str, models_dir: str, port: int, args, log_path: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        str(REPO / "app.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        model,
        "--models-dir",
        models_dir,
        "--concurrency",
        str(args.concurrency),
        "--queue-size",
        str(args.queue_size),
    ]
    with open(log_path, "w") as log:  # the server keeps its own handle
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"),
        )


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 180.0):
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited with code {server.returncode} before it was ready")
        try:
            if requests.get(url + "/gradio_api/info", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the app was not ready at {url} after {timeout:.0f} s")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(values, q))


def run_load(url: str, args, settings: dict) -> dict:
    """All clients at once (``settings``: sampler and guidance); returns per-request records."""
    from gradio_client import Client

    jobs = [{"i": i, "client": i % args.clients, "bad": False} for i in range(args.requests)]
    bad_at = args.requests // 2  # the bad request goes in mid-load, from one of the clients
    jobs.insert(bad_at, {"i": args.requests, "client": bad_at % args.clients, "bad": True})
    records, lock = [], threading.Lock()
    deadline = time.monotonic() + args.deadline

    def client_loop(cid: int):
        client = Client(url, verbose=False)
        for job in (j for j in jobs if j["client"] == cid):
            if time.monotonic() > deadline:
                rec = {**job, "ok": False, "error": "deadline passed before it was sent", "seconds": None}
            else:
                kwargs = {"prompt": f"a red circle {job['i']}", "seed": job["i"], "steps": args.steps, **settings}
                if job["bad"]:
                    kwargs["width"] = 17
                t0 = time.perf_counter()
                try:
                    images, seed = client.submit(api_name="/generate", **kwargs).result(
                        timeout=args.request_timeout
                    )
                    rec = {**job, "ok": len(images) == 1 and seed == job["i"], "error": None}
                except Exception as e:  # a failed request is a result, not a crash of the benchmark
                    rec = {**job, "ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
                rec["seconds"] = time.perf_counter() - t0
            with lock:
                records.append(rec)

    threads = [threading.Thread(target=client_loop, args=(c,), daemon=True) for c in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + args.request_timeout))
    return {"records": records, "wall_s": time.perf_counter() - t0}


def summarize(records: list[dict], wall: float, args, peak_rss: int, hwm: int | None, model: str) -> dict:
    good = [r for r in records if not r["bad"]]
    bad = [r for r in records if r["bad"]]
    lat = [r["seconds"] for r in good if r["ok"]]
    return {
        "model": model,
        "requests": args.requests,
        "clients": args.clients,
        "steps": args.steps,
        "concurrency": args.concurrency,
        "burst_steps": args.burst_steps,
        "completed": len(lat),
        "failed": len(good) - len(lat),
        "missing": args.requests - len(good),
        "bad_request_failed_alone": bool(bad) and not bad[0]["ok"] and len(lat) == args.requests,
        "bad_request_error": bad[0]["error"] if bad else None,
        "latency_p50_s": percentile(lat, 50),
        "latency_p95_s": percentile(lat, 95),
        "latency_max_s": max(lat) if lat else None,
        "wall_s": wall,
        "throughput_req_per_s": len(lat) / wall if wall else None,
        "server_peak_rss_mb": peak_rss / 2**20,
        "server_vmhwm_mb": hwm / 2**20 if hwm else None,
        "errors": sorted({r["error"] for r in good if r["error"]})[:5],
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_avg_1min_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def write(summary: dict, out: str):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(summary, f, indent=2)

    def fmt(v, d=2):
        return "n/a" if v is None else f"{v:.{d}f}"

    s = summary
    rows = [
        ("requests x clients", f"{s['requests']} x {s['clients']} (+1 bad request)"),
        ("model / steps / sampler / guidance / app concurrency",
         f"{s['model']} / {s['steps']} / {s['sampler']} / {s['guidance']} / {s['concurrency']}"),
        ("completed / failed / missing", f"{s['completed']} / {s['failed']} / {s['missing']}"),
        ("bad request failed alone", f"{s['bad_request_failed_alone']} ({s['bad_request_error']})"),
        ("latency p50 / p95 / max (s)",
         f"{fmt(s['latency_p50_s'])} / {fmt(s['latency_p95_s'])} / {fmt(s['latency_max_s'])}"),
        ("wall time (s) / throughput (req/s)", f"{fmt(s['wall_s'], 1)} / {fmt(s['throughput_req_per_s'])}"),
        ("server peak RSS over both phases (MB, sampled / VmHWM)",
         f"{fmt(s['server_peak_rss_mb'], 0)} / {fmt(s['server_vmhwm_mb'], 0)}"),
        ("machine: CPUs / 1-min load average after",
         f"{s['cpu_count']} / {fmt(s['load_avg_1min_after'], 1)}"),
    ]
    with open(out + ".md", "w") as f:
        f.write("# Load: concurrent /generate requests to the app (`python -m bench.load`)\n\n")
        f.write("| measure | value |\n|---|---|\n")
        f.writelines(f"| {k} | {v} |\n" for k, v in rows)
        if "burst" in s:
            f.write("\n## Burst past the queue's bound (plain HTTP: `POST /gradio_api/call/generate`)\n\n")
            f.write("| measure | value |\n|---|---|\n")
            f.writelines(f"| {k} | {v} |\n" for k, v in burst_rows(s, fmt))
        f.write(f"\ncommand: `{s['command']}`\n")


def request_settings(url: str, model: str | None) -> dict:
    """Sampler and guidance for every request: the model card's, else the app's defaults."""
    import httpx

    with httpx.Client(timeout=30) as http:
        app = endpoint_defaults(http, url)
    card = {}
    if model:
        from latentgen.pipeline import read_model_card_defaults

        card = read_model_card_defaults(model)
    return {"sampler": card.get("sampler", app["sampler"]), "guidance": card.get("guidance_scale", app["guidance"])}


def measure(args, url: str, server: subprocess.Popen) -> dict:
    """Both phases against the running server."""
    wait_ready(url, server)
    settings = request_settings(url, args.model)
    watch = MemoryWatch(server.pid)
    load = run_load(url, args, settings)
    burst = None
    if args.burst:
        burst = run_burst(url, args.burst, args.request_timeout, args.burst_deadline,
                          steps=args.burst_steps, **settings)
    peak, hwm = watch.stop(), vm_hwm(server.pid)
    return {"settings": settings, "load": load, "burst": burst, "peak": peak, "hwm": hwm,
            "alive": server.poll() is None}


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = " ".join(["python -m bench.load", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory(prefix="latentgen-load-") as tmp:
        model = args.model or tiny_model(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = os.path.join(tmp, "app.log")
        server = start_server(model, os.path.join(tmp, "models"), port, args, log_path)
        try:
            m = measure(args, url, server)
        except BaseException:
            print(Path(log_path).read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        label = "tiny (random, 16 px)" if not args.model else args.model
        summary = summarize(m["load"]["records"], m["load"]["wall_s"], args, m["peak"], m["hwm"], label)
        summary.update(m["settings"], server_alive_after=m["alive"], command=command,
                       server_log_tracebacks=Path(log_path).read_text(errors="replace").count("Traceback"))
        if m["burst"]:
            summary.update(summarize_burst(m["burst"], args.burst, args.queue_size, percentile))
    write(summary, args.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "errors"}, indent=2))
    if summary["errors"]:
        print("errors:", *summary["errors"], sep="\n  ")
    return summary


if __name__ == "__main__":
    main()
