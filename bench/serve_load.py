"""`imgcls serve` under load: requests/s and p50/p99 latency at 1, 8 and 32 concurrent clients,
one image per request, in three batching modes: waiting up to 5 ms for company
(``--max-wait-ms 5``), no wait but batching what queued while the model ran (``--max-wait-ms 0``,
the default), and no batching at all (``--max-batch 1``).

The server runs in its own process (as in production); the clients are threads of this one,
each sending a 32x32 PNG to ``/v1/predict`` for ``--seconds``. The model is `fast` trained one
epoch on random images (speed does not depend on the weights), served with ``--engine``.

    python bench/serve_load.py --engine onnx
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import ROOT, write_result

sys.path.insert(0, str(ROOT))


MODES = {
    "wait 5 ms": ["--max-wait-ms", "5"],
    "queued only": ["--max-wait-ms", "0"],
    "off": ["--max-batch", "1", "--max-wait-ms", "0"],
}


def png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def load(url: str, clients: int, seconds: float) -> dict:
    import httpx

    body = png()
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = c.post("/v1/predict", files={"file": ("x.png", body)})
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    errors[0] += r.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors[0],
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="onnx", choices=["keras", "keras-bf16", "onnx"])
    p.add_argument("--seconds", type=float, default=10.0)
    a = p.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from engines import make_run
    from test_serve import Server

    base = Path(tempfile.mkdtemp(prefix="imgcls-bench-serve-"))
    rows = []
    try:
        run = make_run("fast", base)
        for mode, flags in MODES.items():
            server = Server(run, "--engine", a.engine, *flags)
            try:
                load(server.url, 4, 2.0)  # warm-up
                for clients in (1, 8, 32):
                    row = {
                        "engine": a.engine,
                        "batching": mode,
                        **load(server.url, clients, a.seconds),
                    }
                    rows.append(row)
                    print(row, flush=True)
            finally:
                server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"\n{'batching':<12} {'clients':>7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"
    )
    for r in rows:
        print(f"{r['batching']:<12} {r['clients']:>7} {r['requests_per_s']:>7.0f} "
              f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['errors']:>6}")  # fmt: skip
    record = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "rows": rows}
    print(f"results: {write_result('serve_load_' + a.engine, record)}")


if __name__ == "__main__":
    main()
