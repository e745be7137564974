"""What a search is made of: KerasTuner's oracle (its state written atomically) and one
trial, an ``imgcls`` command in a subprocess that dies with the search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imgcls.errors import ImgclsError
from imgcls.io import write_json

OBJECTIVE = "val_accuracy"
TRIAL_FIGURES = ("epochs_run", "seconds", "peak_rss_mb")  # reported to the oracle beside it
SERVE_POLL_S = 0.2  # how often the chief checks whether the search has ended
MAX_FAILED_IN_A_ROW = 3  # consecutive failed trials that end the search (KerasTuner's default)


def make_oracle(search):
    """The KerasTuner oracle of ``search``: new, or reloaded from ``DIR/oracle``."""
    import keras_tuner as kt

    c = search.config
    hp = kt.HyperParameters()
    for name, param in search.space.items():
        param.add_to(hp, search.defaults[name])
    common = dict(
        objective=kt.Objective(OBJECTIVE, direction="max"),
        hyperparameters=hp,
        seed=c.seed,
        allow_new_entries=False,
        tune_new_entries=False,
        max_consecutive_failed_trials=MAX_FAILED_IN_A_ROW,
    )
    if c.algorithm == "hyperband":
        oracle = kt.oracles.HyperbandOracle(max_epochs=search.max_epochs, factor=3, **common)
        oracle.max_trials = c.trials  # Hyperband has no count of its own: --trials caps it too
    elif c.algorithm == "random":
        oracle = kt.oracles.RandomSearchOracle(max_trials=c.trials, **common)
    else:
        oracle = kt.oracles.BayesianOptimizationOracle(max_trials=c.trials, **common)
    oracle._set_project_dir(str(search.folder), "oracle")
    oracle._display.verbose = 0  # imgcls prints one line per trial instead
    # KerasTuner writes its state with a plain open(): a kill mid-write leaves it unreadable
    # (keras-tuner#835, #987). Write each file whole instead.
    oracle.save = lambda: write_json(oracle._get_oracle_fname(), oracle.get_state())
    oracle._save_trial = lambda trial: write_json(
        os.path.join(oracle._get_trial_dir(trial.trial_id), "trial.json"), trial.get_state()
    )
    if Path(oracle._get_oracle_fname()).is_file():
        oracle.reload()  # trials that were running go back in the queue, to be proposed again
    oracle.end_trial = _end_once(oracle)
    return oracle


def _end_once(oracle):
    """``oracle.end_trial`` that ends each trial once. After a chief restarts, a trial that was
    running is queued to be proposed again, but the worker that had it (which waits for the
    chief to come back) may still finish it: then it leaves the queue, and a second ending of
    the same trial by a worker that got it from the queue meanwhile is ignored."""
    end = oracle.end_trial

    def end_trial(trial) -> None:
        if trial.trial_id in oracle.end_order:
            for tuner_id, ongoing in list(oracle.ongoing_trials.items()):
                if ongoing.trial_id == trial.trial_id:
                    oracle.ongoing_trials.pop(tuner_id)
            return
        if trial.trial_id in oracle._retry_queue:
            oracle._retry_queue.remove(trial.trial_id)
        end(trial)

    return end_trial


def serve_oracle(oracle, address: str) -> None:
    """Serve ``oracle`` at ``address`` to workers (KerasTuner's gRPC chief) until every trial
    is proposed and ended and every worker has been told to stop.

    KerasTuner's own ``start_server`` polls every 20 s and reads the address from environment
    variables; this is the same servicer with a short poll."""
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer, exit_chief

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if server.add_insecure_port(address) == 0:
        raise ImgclsError(f"`--chief` {address}: cannot listen there (in use, or not this host)")
    server.start()
    try:
        while not (servicer.stop_triggered and exit_chief(oracle)):
            time.sleep(SERVE_POLL_S)
    finally:
        server.stop(grace=2)


def run_imgcls(args: list[str], log: Path) -> tuple[int, float, str]:
    """``imgcls ARGS`` in a subprocess, its output appended to ``log``; returns its exit status,
    its peak resident memory in MB and its last error line (or last line)."""
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ imgcls {' '.join(args)}\n")
        f.flush()
        proc = subprocess.Popen(
            [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *args],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child alone
        proc.returncode = os.waitstatus_to_exitcode(status)
    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    errors = [x for x in lines if x.startswith("imgcls: error") or "Error" in x]
    message = (errors or lines or ["no output"])[-1][:300]
    return proc.returncode, round(usage.ru_maxrss / 1024, 1), message


# Runs `python -m imgcls ARGS` after asking Linux to SIGKILL it when the search process dies
# (also by SIGKILL), so a killed search never leaves a trial training on into a folder that a
# resume will reuse. Done in the child's own first lines, not with Popen's preexec_fn: forking a
# worker that holds a gRPC channel through Python code crashed the child ("epoll_wait error:
# Bad file descriptor"); without preexec_fn the child is spawned without running Python code.
_DIE_WITH_PARENT = (
    "import ctypes, os, runpy, signal, sys\n"
    "if sys.platform == 'linux':\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "    if os.getppid() != int(sys.argv[1]): sys.exit(137)  # the search died first\n"
    "sys.argv = ['imgcls', *sys.argv[2:]]\n"
    "runpy.run_module('imgcls', run_name='__main__', alter_sys=True)\n"
)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def now() -> str:
    """The time, as tune.json records it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
