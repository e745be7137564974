"""``imgcls train`` and ``imgcls serve``: their flags, generated from the settings dataclasses,
and the train command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def train_args(p: argparse.ArgumentParser) -> None:
    """``imgcls train``'s arguments: DATA, --out/--resume/--config, and one flag per
    :class:`~imgcls.config.TrainConfig` field, generated from the dataclass (its type, its
    ``help`` and ``choices`` metadata), so the flags never drift from the config."""
    import dataclasses
    import typing

    from imgcls.config import TrainConfig

    p.add_argument(
        "data",
        nargs="?",
        help="folder per class, CSV manifest, prepared folder or built-in name "
        "(digits, cifar10, cifar100, mnist, fashion_mnist)",
    )
    p.add_argument(
        "--out", help="run folder to write (model bundle, split.csv, history.csv, checkpoints)"
    )
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its newest good checkpoint")
    p.add_argument(
        "--config", metavar="FILE", help="JSON or TOML file of training settings (flags win)"
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        if not meta.pop("cli", True):
            continue
        flag, kind = "--" + f.name.replace("_", "-"), hints[f.name]
        if f.default not in (None, False, dataclasses.MISSING):
            meta["help"] = f"{meta['help']} (default {f.default})"
        args = typing.get_args(kind)
        if f.name == "model_args":
            p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", **meta)
        elif kind is bool:
            p.add_argument(flag, action="store_true", default=None, **meta)
        elif tuple[int, int] in args:
            p.add_argument(flag, type=int, nargs=2, metavar=("H", "W"), **meta)
        elif tuple[str, ...] in args:
            p.add_argument(flag, type=comma_list, **meta)
        else:
            scalar = next(t for t in (int, float, str) if t is kind or t in args)
            p.add_argument(flag, type=scalar, **meta)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    job = p.add_argument_group("data-parallel job over several processes (JAX backend)")
    job.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    job.add_argument("--num-processes", type=int, metavar="N", help="processes in the job")
    job.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1")


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(","))


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import dataclasses

    from imgcls.config import TrainConfig, load_config_file
    from imgcls.train import train

    if args.resume and args.out and Path(args.out) != Path(args.resume):
        parser.error("--resume RUN continues RUN in place; drop --out or make it the same folder")
    if not args.resume and not args.out:
        parser.error("--out RUN is required (or --resume RUN)")
    if not args.resume and not args.data:
        parser.error("DATA is required: a folder, a CSV manifest or a built-in name such as digits")
    base = TrainConfig.from_dict(load_config_file(args.config)) if args.config else TrainConfig()
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig)}
    overrides["model_args"] = parse_model_args(args.model_arg, parser) if args.model_arg else None
    if overrides["image_size"] is not None:
        overrides["image_size"] = tuple(overrides["image_size"])
    result = train(
        args.data,
        out=args.resume or args.out,
        config=None if args.resume else base,
        resume=bool(args.resume),
        verbose=not args.quiet,
        **overrides,
    )
    if result.test_metrics:
        print(
            f"test accuracy {result.test_metrics['accuracy']:.4f} on "
            f"{result.test_metrics['n_images']} images"
        )
    print(f"run saved to {result.run_dir}")
    return 0


def parse_model_args(items: list[str], parser: argparse.ArgumentParser) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--model-arg must look like KEY=VALUE. Received: {item}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def serve_args(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`~imgcls.serve.limits.ServeConfig` field (its type and help)."""
    import dataclasses

    from imgcls.serve.limits import ServeConfig

    for f in dataclasses.fields(ServeConfig):
        meta = dict(f.metadata)
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        if f.default is not None:
            meta["help"] = f"{meta['help']} (default {f.default})"
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, **meta)


def tune_args(p: argparse.ArgumentParser) -> None:
    """``imgcls tune``'s arguments (the fields of :class:`~imgcls.tune.TuneSettings`)."""
    from imgcls.config import PRECISIONS
    from imgcls.tune import ALGORITHMS, FINALS

    p.add_argument("data", nargs="?", help="labelled data, as `imgcls train` takes it")
    p.add_argument("--out", help="new folder for the search (trials, best/, report.html)")
    p.add_argument("--resume", metavar="DIR", help="continue the search in DIR after a stop")
    p.add_argument("--model", help="registered model (default: as `imgcls train` picks)")
    p.add_argument("--algorithm", choices=ALGORITHMS, help="KerasTuner oracle (default bayesian)")
    p.add_argument("--trials", type=int, help="trials to run (default 10)")
    p.add_argument("--max-time", type=float, metavar="MIN", help="minutes for the trials")
    p.add_argument("--space", metavar="FILE", help="JSON/TOML ranges narrowing the model's space")
    p.add_argument("--seed", type=int, help="seed of the split, the oracle and every trial")
    p.add_argument(
        "--final",
        choices=FINALS,
        help="retrain the best settings on train+val (default) or keep the best trial",
    )
    p.add_argument("--val-split", type=float, help="fraction for validation (default 0.1)")
    p.add_argument("--test-split", type=float, help="fraction for test (default 0.1)")
    p.add_argument("--precision", choices=PRECISIONS, help="numeric precision of every trial")
    p.add_argument("--backend", choices=("tensorflow", "jax", "torch"), help="Keras backend")
    p.add_argument(
        "--chief", metavar="HOST:PORT", help="serve the oracle here to workers on other hosts"
    )
    p.add_argument(
        "--worker", metavar="HOST:PORT", help="run trials for the chief at HOST:PORT (same DATA)"
    )
    p.add_argument("--worker-id", help="this worker's name (default: host name and process id)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


TUNE_SETTINGS = (
    "model", "algorithm", "trials", "max_time", "space", "seed", "final", "val_split",
    "test_split", "precision", "backend",
)  # fmt: skip
