"""The subcommands: each makes one library call with what was given and prints the result."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from imgcls.cli.flags import given


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcls.config import TrainConfig, load_config_file
    from imgcls.io import Timeline
    from imgcls.workflow import train

    if args.resume and args.out and Path(args.out) != Path(args.resume):
        parser.error("--resume RUN continues RUN in place; drop --out or make it the same folder")
    if not args.resume and not args.out:
        parser.error("--out RUN is required (or --resume RUN)")
    if not args.resume and not args.data:
        parser.error("DATA is required: a folder, a CSV manifest or a built-in name such as digits")
    base = TrainConfig.from_dict(load_config_file(args.config)) if args.config else TrainConfig()
    result = train(
        args.data,
        out=args.resume or args.out,
        config=None if args.resume else base,
        resume=bool(args.resume),
        verbose=not args.quiet,
        timeline=Timeline(since_process_start=True),  # interpreter start-up and imports count
        **given(args, TrainConfig),
    )
    if result.test_metrics:
        print(
            f"test accuracy {result.test_metrics['accuracy']:.4f} on "
            f"{result.test_metrics['n_images']} images"
        )
    print(f"run saved to {result.run_dir}")
    print(f"time: {result.timeline.line()}")
    if result.peak_rss_bytes:
        print(f"peak memory {result.peak_rss_bytes / 2**30:.2f} GB")
    return 0


def cmd_evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcls.evaluate import evaluate

    metrics = evaluate(
        args.run,
        args.data,
        out=args.out,
        split=args.split,
        tta=args.tta,
        engine=args.engine,
        corrections=args.corrections,
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


def cmd_explain(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcls.evaluate.explain import explain

    if args.top_k < 1:
        parser.error(f"--top-k must be a positive integer. Received: {args.top_k}")
    result = explain(args.run, args.image, out=args.out, top_k=args.top_k)
    for row in result["top_k"]:
        print(f"{row['label']}  {row['probability']:.4f}")
    print(f"wrote {len(result['files'])} PNGs and explain.json to {args.out}")
    return 0


def cmd_suggest(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcls.suggest import suggest

    rows = suggest(args.run, args.pool, args.n, out=args.out)
    for row in rows[:10]:
        print(f"{row['rank']:>4}  {row['guess']:<16} {row['margin']:.3f}  {row['path']}")
    more = " (first 10 shown)" if len(rows) > 10 else ""
    print(f"wrote {len(rows)} suggestions to {args.out}{more}")
    return 0


def cmd_review(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.export:
        from imgcls.data.corrections import export_corrected
        from imgcls.data.sources import load_source

        n = export_corrected(load_source(args.data, corrections=args.corrections), args.export)
        print(f"wrote {n} images (corrections applied) to {args.export}")
        return 0
    from imgcls.errors import require

    require("fastapi", "uvicorn", why="`imgcls review`", extra="serve")
    from imgcls.serve import run_app
    from imgcls.serve.limits import ServeConfig
    from imgcls.serve.review import create_review_app

    config = ServeConfig(host=args.host, port=args.port, token=args.token).validate()
    app = create_review_app(args.data, args.run, args.corrections, config, label=args.label)
    where = f"http://{config.host}:{config.port}/"
    print(f"reviewing {args.data} on {where}; Ctrl-C stops", file=sys.stderr)
    run_app(app, config)  # serve's limits: read timeout, connection cap
    return 0


def cmd_calibrate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcls.evaluate.calibrate import calibrate

    r = calibrate(args.run, args.data, split=args.split)
    print(
        f"temperature {r['temperature']:.4f} fitted on {r['n_images']} images ({r['split']}): "
        f"NLL {r['nll_before']:.4f} -> {r['nll_after']:.4f}, ECE {r['ece_before']:.4f} -> {r['ece_after']:.4f}"
    )
    print(f"stored in {Path(args.run) / 'bundle.json'}")
    return 0


def cmd_predict(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:

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


def cmd_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcls.export import export

    path = export(
        args.run, args.format, args.out, tta=not args.no_tta, quantize=args.quantize,
        calibration=args.calibration,
    )  # fmt: skip
    print(f"wrote {path} and {Path(args.out) / 'imgcls.json'}")
    return 0


def cmd_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcls.serve import ServeConfig, serve

    values = given(args, ServeConfig)
    values["token"] = values.get("token") or os.environ.get("IMGCLS_TOKEN") or None
    serve(args.run, ServeConfig(**values))
    return 0


def cmd_prepare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcls.config import PrepareConfig
    from imgcls.data.prepare import prepare

    settings = given(args, PrepareConfig)
    if args.from_run and not args.label_issues:
        parser.error(
            "--from-run RUN gives the probabilities for --label-issues; add --label-issues"
        )
    probabilities = None
    if args.from_run:
        from imgcls import backend
        from imgcls.predict import RunProbabilities

        backend.import_keras_quietly()
        probabilities = RunProbabilities(args.from_run)
    result = prepare(
        args.data, out=args.out, probabilities=probabilities, verbose=not args.quiet, **settings
    )
    if probabilities is not None and probabilities.in_sample:
        print(f"imgcls: warning: {probabilities.in_sample} images were trained on by every "
              "--from-run run; their probabilities are in sample (optimistic)", file=sys.stderr)  # fmt: skip
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


def cmd_models(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
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


def cmd_tune(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcls.tune import TuneSettings, tune

    settings = given(args, TuneSettings)
    if args.resume:
        if settings or args.data or args.out:
            parser.error(
                "--resume DIR continues a search as it was started; give nothing else "
                "(but --chief or --worker)"
            )
        record = tune(
            out=args.resume, resume=True, chief=args.chief, worker=args.worker,
            worker_id=args.worker_id, verbose=not args.quiet,
        )  # fmt: skip
        out = Path(args.resume)
    else:
        if not args.data or not args.out:
            parser.error("DATA and --out DIR are required (or --resume DIR)")
        record = tune(
            args.data, args.out, chief=args.chief, worker=args.worker, worker_id=args.worker_id,
            verbose=not args.quiet, **settings,
        )  # fmt: skip
        out = Path(args.out)
    if args.worker:
        print(
            f"worker {record['worker']['id']}: no more trials from {args.worker}; trials in {out}"
        )
        return 0
    test, best = record["test"], record["best"]
    print(
        f"best trial {best['trial']}: val_accuracy {best['val_accuracy']:.4f}; "
        f"test accuracy {test['accuracy']:.4f} (95% CI {test['ci95'][0]:.4f}-{test['ci95'][1]:.4f}, "
        f"{test['n_images']} images, read once)"
    )
    print(f"wrote {out / 'best'}, {out / 'trials.csv'} and {out / 'report.html'}")
    return 0
