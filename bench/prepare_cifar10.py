"""Wall time and peak memory of ``imgcls prepare`` on the 50,000 CIFAR-10 training JPEGs.

    .venv/bin/python bench/prepare_cifar10.py [--data DIR] [--repeat N]

Runs the real command in a subprocess, samples the resident memory of its whole process tree
(parent + scan workers) from /proc every 50 ms, and reads ru_maxrss of the largest process.
Prints a table and writes bench/results/prepare_cifar10.json. Target: <= 20 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import write_result

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10" / "train"
IMGCLS = [str(Path(sys.executable).with_name("imgcls"))]
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * PAGE
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack += children.get(p, [])
    return total


def measure(command: list[str]) -> dict:
    """Run ``command``; its wall seconds, exit code, peak tree RSS and largest single-process RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.join()
    return {
        "wall_s": round(wall, 2),
        "returncode": proc.returncode,
        "peak_tree_rss_mb": round(peak[0] / 2**20, 1),
        "max_process_rss_mb": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
        ),
        "stdout": out.strip().splitlines()[-3:],
        "stderr_tail": err.strip().splitlines()[-3:],
    }


def machine() -> str:
    load = os.getloadavg()[0]
    return f"{platform.machine()}, {os.cpu_count()} cores shared with other engineers (load {load:.1f} at start)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(CIFAR))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        print(f"skipped: {args.data} not found")
        return 0
    where = machine()
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            command = [
                *IMGCLS,
                "prepare",
                args.data,
                "--out",
                str(Path(tmp) / "prepared"),
                "--quiet",
            ]
            runs.append(measure(command))
            report = json.loads((Path(tmp) / "prepared" / "report.json").read_text())
    print(
        f"{'run':>4} {'wall s':>8} {'peak tree RSS MB':>17} {'max process RSS MB':>19} {'usable':>8} {'rc':>3}"
    )
    for k, r in enumerate(runs):
        print(
            f"{k + 1:>4} {r['wall_s']:>8.1f} {r['peak_tree_rss_mb']:>17.0f} {r['max_process_rss_mb']:>19.0f} "
            f"{report['n_usable']:>8} {r['returncode']:>3}"
        )
    print(f"issues: {report['issue_counts']}; machine: {where}")
    result = {
        "command": "imgcls prepare " + args.data + " --out <tmp> --quiet",
        "runs": runs,
        "n_files": report["n_files"],
        "n_usable": report["n_usable"],
        "issue_counts": report["issue_counts"],
        "image_size": report["image_size"],
        "machine": where,
    }
    write_result("prepare_cifar10", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
