"""The ``imgcls`` command: parse arguments, make one library call, print the result.

No logic lives here. Each subcommand pops its CLI-only options and hands the rest to the
library function of the same name with the same keyword names. Bad input raises
``ImgclsError``, printed as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from imgcls import __version__
from imgcls.config import TTA_MODES

os.environ.setdefault(
    "TF_CPP_MIN_LOG_LEVEL", "3"
)  # hide TensorFlow's C++ log lines; errors still raise


def _train_args(p: argparse.ArgumentParser) -> None:
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
            p.add_argument(flag, type=_comma_list, **meta)
        else:
            scalar = next(t for t in (int, float, str) if t is kind or t in args)
            p.add_argument(flag, type=scalar, **meta)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    job = p.add_argument_group("data-parallel job over several processes (JAX backend)")
    job.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    job.add_argument("--num-processes", type=int, metavar="N", help="processes in the job")
    job.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1")


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(","))


def _cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
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
    overrides["model_args"] = _parse_model_args(args.model_arg, parser) if args.model_arg else None
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


def _parse_model_args(items: list[str], parser: argparse.ArgumentParser) -> dict:
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


def _cmd_evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcls.evaluate import evaluate

    metrics = evaluate(
        args.run, args.data, out=args.out, split=args.split, tta=args.tta, engine=args.engine
    )
    print(
        f"accuracy {metrics['accuracy']:.4f} on {metrics['n_images']} images ({metrics['split']})"
    )
    seen = metrics["seen_in_training"]
    if seen and seen["n"] and metrics["split"] not in ("train", "val"):  # those were asked for
        print(
            f"imgcls: warning: {seen['n']} of {metrics['n_images']} images are identical to images "
            f"run {args.run} trained or validated on (first: {seen['ids'][0]}); this accuracy is "
            "not a held-out estimate",
            file=sys.stderr,
        )
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'report.html'}")
    return 0


def _cmd_explain(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcls.evaluate.explain import explain

    if args.top_k < 1:
        parser.error(f"--top-k must be a positive integer. Received: {args.top_k}")
    result = explain(args.run, args.image, out=args.out, top_k=args.top_k)
    for row in result["top_k"]:
        print(f"{row['label']}  {row['probability']:.4f}")
    print(f"wrote {len(result['files'])} PNGs and explain.json to {args.out}")
    return 0


def _cmd_calibrate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcls.evaluate.calibrate import calibrate

    r = calibrate(args.run, args.data, split=args.split)
    print(
        f"temperature {r['temperature']:.4f} fitted on {r['n_images']} images ({r['split']}): "
        f"NLL {r['nll_before']:.4f} -> {r['nll_after']:.4f}, ECE {r['ece_before']:.4f} -> {r['ece_after']:.4f}"
    )
    print(f"stored in {Path(args.run) / 'bundle.json'}")
    return 0


def _cmd_predict(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import csv

    from imgcls.data.sources import list_image_files
    from imgcls.predict import Predictor

    if args.ray and not args.out:
        parser.error("--ray writes a Parquet file: add --out predictions.parquet")
    if args.top_k < 1:
        parser.error(f"--top-k must be a positive integer. Received: {args.top_k}")
    paths = list_image_files(args.paths)
    if not paths:
        print(f"imgcls: error: no image files found in {' '.join(args.paths)}", file=sys.stderr)
        return 2
    if args.out:
        from imgcls.batch import predict_to_parquet

        out = predict_to_parquet(args.run, paths, args.out, args.ray, args.workers, args.engine)
        print(f"wrote {out} ({len(paths)} images)")
        return 0
    results = Predictor(args.run, engine=args.engine).predict(paths, top_k=args.top_k, tta=args.tta)
    if args.format == "json":
        print(json.dumps([r.to_dict() for r in results], indent=2))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "label", "probability", "top_k", "error"])
        for r in results:
            writer.writerow(
                [
                    r.source,
                    r.label or "",
                    "" if r.probability is None else f"{r.probability:.6f}",
                    ";".join(f"{lab}:{p:.6f}" for lab, p in r.top_k),
                    r.error or "",
                ]
            )
    else:
        width = max(len(r.source) for r in results)
        for r in results:
            if r.error is None:
                others = "  ".join(f"{lab} {p:.3f}" for lab, p in r.top_k[1:])
                print(f"{r.source:<{width}}  {r.label}  {r.probability:.3f}  {others}".rstrip())
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"imgcls: cannot predict {r.source}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcls.export import export

    path = export(args.run, args.format, args.out, tta=not args.no_tta)
    print(f"wrote {path} and {Path(args.out) / 'imgcls.json'}")
    return 0


def _serve_args(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`~imgcls.serve.limits.ServeConfig` field (its type and help)."""
    import dataclasses

    from imgcls.serve.limits import ServeConfig

    for f in dataclasses.fields(ServeConfig):
        meta = dict(f.metadata)
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        if f.default is not None:
            meta["help"] = f"{meta['help']} (default {f.default})"
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, **meta)


def _cmd_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import dataclasses

    from imgcls.serve import ServeConfig, serve

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)}
    values["token"] = values["token"] or os.environ.get("IMGCLS_TOKEN") or None
    serve(args.run, ServeConfig(**values))
    return 0


def _cmd_prepare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcls.data.prepare import prepare

    if args.from_run and not args.label_issues:
        parser.error(
            "--from-run RUN gives the probabilities for --label-issues; add --label-issues"
        )
    if args.from_run:
        from imgcls import backend

        backend.import_keras_quietly()
    result = prepare(
        args.data,
        out=args.out,
        image_size=tuple(args.image_size) if args.image_size else None,
        on_error=args.on_error,
        val_split=args.val_split,
        test_split=args.test_split,
        seed=args.seed,
        label_issues=args.label_issues,
        from_run=args.from_run,
        verbose=not args.quiet,
    )
    report = result.report
    for issue in result.bad_files:
        print(
            f"imgcls: {'bad file' if not result.completed else 'left out'} {issue['path']}: "
            f"{issue['kind']}: {issue['detail']}",
            file=sys.stderr,
        )
    if not result.completed:
        print(
            f"imgcls: {len(result.bad_files)} bad file(s) with --on-error fail; nothing prepared. "
            f"See {result.out / 'report.html'}",
            file=sys.stderr,
        )
        return 1
    counts = ", ".join(f"{k} {v}" for k, v in report["issue_counts"].items()) or "none"
    print(
        f"{report['n_usable']} usable images of {report['n_files']} ({report['split_counts']['train']} train / "
        f"{report['split_counts']['val']} val / {report['split_counts']['test']} test); issues: {counts}"
    )
    for suggestion in report["suggestions"]:
        print(f"suggestion: {suggestion}")
    print(f"prepared {result.out} (manifest.csv, {report['cache']}, report.json, report.html)")
    return 0


def _cmd_models(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcls.models import create_model, get_spec, list_models

    size = tuple(args.image_size)
    print(
        f"{'model':<20} {'parameters':>12}  description   (for {size[0]}x{size[1]} RGB, {args.classes} classes)"
    )
    for name in list_models():
        spec = get_spec(name)
        model = create_model(
            name, (*size, 3), args.classes, **({"weights": "none"} if spec.pretrained else {})
        )
        print(f"{name:<20} {model.count_params():>12,}  {spec.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgcls",
        description="Image classification with Keras: prepare data, train, evaluate and predict.",
    )
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "prepare", help="scan, clean, split and cache DATA; write a report of every issue"
    )
    p.add_argument("data", help="folder per class (optionally train/val/test) or CSV manifest")
    p.add_argument(
        "--out",
        required=True,
        help="folder for manifest.csv, the pixel cache, report.json and report.html",
    )
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="cache size (default: as train picks)",
    )
    p.add_argument(
        "--on-error",
        choices=["skip", "fail"],
        default="skip",
        help="skip: leave bad files out and list them (default); fail: exit 1 listing them",
    )
    p.add_argument(
        "--val-split", type=float, default=0.1, help="fraction for validation (default 0.1)"
    )
    p.add_argument("--test-split", type=float, default=0.1, help="fraction for test (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--label-issues", action="store_true", help="rank suspected mislabelled images (cleanlab)"
    )
    p.add_argument(
        "--from-run",
        metavar="RUN",
        help="with --label-issues: probabilities from this run's model "
        "(default: k-fold cross-validation of a quick model)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(
        func=_cmd_prepare, keras=False
    )  # scanning never needs TensorFlow: skip its import

    p = sub.add_parser("train", help="train a model and write a run folder")
    _train_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a run on a data set (default: its test split)")
    p.add_argument("run", help="run folder written by `imgcls train`")
    p.add_argument(
        "data", help="the run's data (its test split is used) or other labelled data (all of it)"
    )
    p.add_argument("--out", required=True, help="folder for metrics.json and report.html")
    p.add_argument(
        "--split", choices=["test", "val", "train", "all"], help="split of the run's own data"
    )
    _tta_arg(p)
    _engine_arg(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "explain", help="filters, feature maps, Grad-CAM and top classes for one image"
    )
    p.add_argument("run", help="run folder written by `imgcls train`")
    p.add_argument("image", help="an image file")
    p.add_argument("--out", required=True, help="folder for the PNGs and explain.json")
    p.add_argument("--top-k", type=int, default=5, help="classes shown (default 5)")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser(
        "calibrate", help="fit a temperature on the validation split; predict uses it"
    )
    p.add_argument("run", help="run folder written by `imgcls train` (its bundle.json is updated)")
    p.add_argument("data", nargs="?", help="the run's data (default: as recorded in the run)")
    p.add_argument(
        "--split",
        choices=["val", "test", "train", "all"],
        help="split of the run's data (default val)",
    )
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("predict", help="classify image files, folders or globs")
    p.add_argument("run", help="run folder written by `imgcls train`")
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files, folders, glob patterns or CSV manifests",
    )
    p.add_argument("--top-k", type=int, default=3, help="classes shown per image (default 3)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    _tta_arg(p)
    _engine_arg(p)
    p.add_argument(
        "--out", help="write every prediction to this Parquet file (resumable; for many images)"
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="with --out: predict on Ray (alone: a local Ray; or a cluster's address)",
    )
    p.add_argument(
        "--workers", type=int, help="with --out: processes or Ray actors (default: cores)"
    )
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="write the run's inference model for ONNX, TF or LiteRT")
    p.add_argument("run", help="run folder written by `imgcls train`")
    p.add_argument("--format", required=True, choices=["onnx", "savedmodel", "litert"])
    p.add_argument("--out", required=True, help="folder for the model file and imgcls.json")
    p.add_argument(
        "--no-tta",
        action="store_true",
        help="leave the run's test-time augmentation out of the graph (one view: faster)",
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("serve", help="an HTTP server: web page, JSON and Open Inference API")
    p.add_argument("run", help="run folder written by `imgcls train`")
    _serve_args(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("models", help="list registered models with their parameter counts")
    p.add_argument("--image-size", type=int, nargs=2, default=(32, 32), metavar=("H", "W"))
    p.add_argument("--classes", type=int, default=10)
    p.set_defaults(func=_cmd_models)
    return parser


def _engine_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=["keras", "onnx"],
        default="keras",
        help="keras, or onnx: ONNX Runtime on an export cached in the run folder (faster on CPU)",
    )


def _tta_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tta",
        nargs="?",
        const="flip",
        choices=TTA_MODES,
        help="test-time augmentation: none, flip (alone: --tta), translate or flip_translate; "
        "default: what the run's bundle.json says",
    )


def _backend_asked(args: argparse.Namespace) -> str | None:
    """``--backend``, else the ``backend`` of ``--config`` (train), else None ($KERAS_BACKEND)."""
    if getattr(args, "backend", None):
        return args.backend
    if getattr(args, "config", None):
        from imgcls.config import load_config_file

        return load_config_file(args.config).get("backend")
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``imgcls`` console script."""
    from imgcls.errors import ImgclsError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "keras", True):
            from imgcls import backend

            backend.select(_backend_asked(args))
            backend.import_keras_quietly()
            if getattr(args, "num_processes", None):
                backend.init_processes(args.coordinator, args.num_processes, args.process_id)
        return args.func(args, parser)
    except ImgclsError as e:
        print(f"imgcls: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgcls: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
