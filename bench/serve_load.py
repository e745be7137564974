"""`imgcls serve` under load: requests/s, p50/p99 latency, errors and the server's memory at 1,
8, 32 and 64 concurrent clients, one 32x32 PNG per request; then, with ``--soak-minutes``, a
long run at ``--soak-clients`` with the server's RSS sampled every 30 s.

The server runs in its own process (as in production); the clients are asyncio tasks of this
one (one connection each, httpx), on the same cores. The model (``--model``, `classic` by
default) is trained one epoch on random 32x32 images (speed does not depend on the weights)
and served with ``--engine``. ``--modes all`` adds two batching modes to the default (batch what
queued while the model ran): waiting up to 5 ms for company, and no batching.

    python bench/serve_load.py --engine onnx --soak-minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import ROOT, write_result

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MODES = {
    "queued only": ["--max-wait-ms", "0"],
    "wait 5 ms": ["--max-wait-ms", "5"],
    "off": ["--max-batch", "1", "--max-wait-ms", "0"],
}


def png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


async def _load(url: str, clients: int, seconds: float, on_tick=None) -> dict:
    import httpx

    body = png()
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/predict", files={"file": ("x.png", body)})
                    errors += r.status_code != 200
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - t0)

    async def ticker() -> None:
        while on_tick is not None and time.perf_counter() < stop:
            on_tick(len(latencies), errors)
            await asyncio.sleep(30)

    t0 = time.perf_counter()
    await asyncio.gather(ticker(), *(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def load(url: str, clients: int, seconds: float, on_tick=None) -> dict:
    return asyncio.run(_load(url, clients, seconds, on_tick))


def soak(server, clients: int, minutes: float) -> dict:
    pid, t0 = server.proc.pid, time.perf_counter()
    samples = []

    def tick(requests: int, errors: int) -> None:
        sample = {"s": round(time.perf_counter() - t0), "rss_mb": round(rss_mb(pid), 1),
                  "requests": requests, "errors": errors}  # fmt: skip
        samples.append(sample)
        print("soak", sample, flush=True)

    start = rss_mb(pid)
    row = load(server.url, clients, minutes * 60, tick)
    end = rss_mb(pid)
    return {**row, "minutes": minutes, "rss_start_mb": start, "rss_end_mb": end,
            "rss_max_mb": max(s["rss_mb"] for s in samples + [{"rss_mb": end}]),
            "samples": samples}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="onnx", choices=["keras", "keras-bf16", "onnx"])
    p.add_argument("--model", default="classic")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--modes", choices=["default", "all"], default="default")
    p.add_argument("--soak-minutes", type=float, default=0.0)
    p.add_argument("--soak-clients", type=int, default=16)
    a = p.parse_args()
    load_before = os.getloadavg()
    from engines import make_run

    from tests.conftest import Server

    base = Path(tempfile.mkdtemp(prefix="imgcls-bench-serve-"))
    rows, soaked = [], None
    modes = MODES if a.modes == "all" else {"queued only": MODES["queued only"]}
    try:
        run = make_run(a.model, base, 32)
        for mode, flags in modes.items():
            server = Server(run, "--engine", a.engine, *flags)
            try:
                load(server.url, 4, 2.0)  # warm-up
                for clients in a.clients:
                    row = {"engine": a.engine, "model": a.model, "batching": mode,
                           **load(server.url, clients, a.seconds),
                           "rss_mb": rss_mb(server.proc.pid)}  # fmt: skip
                    rows.append(row)
                    print(row, flush=True)
                if a.soak_minutes and mode == "queued only":
                    soaked = soak(server, a.soak_clients, a.soak_minutes)
            finally:
                server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\n{'batching':<12} {'clients':>7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'errors':>6} {'RSS MB':>7}")  # fmt: skip
    for r in rows:
        print(f"{r['batching']:<12} {r['clients']:>7} {r['requests_per_s']:>7.0f} "
              f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['errors']:>6} {r['rss_mb']:>7.0f}")  # fmt: skip
    if soaked:
        print(f"soak: {soaked['minutes']:g} min at {soaked['clients']} clients, "
              f"{soaked['requests']} requests ({soaked['requests_per_s']:.0f}/s), "
              f"p50 {soaked['p50_ms']:.1f} ms, p99 {soaked['p99_ms']:.1f} ms, "
              f"{soaked['errors']} errors, RSS {soaked['rss_start_mb']:.0f} -> "
              f"{soaked['rss_end_mb']:.0f} MB (max {soaked['rss_max_mb']:.0f})")  # fmt: skip
    record = {"machine": f"{platform.machine()} {os.cpu_count()} cores",
              "load_before": load_before, "rows": rows, "soak": soaked}  # fmt: skip
    print(f"results: {write_result(f'serve_load_{a.model}_{a.engine}', record)}")


if __name__ == "__main__":
    main()
