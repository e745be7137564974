"""The ``imgcls`` command: parse arguments, make one library call, print the result.

No logic lives here. Each subcommand pops its CLI-only options and hands the rest to the
library function of the same name with the same keyword names. Bad input raises
``ImgclsError``, printed as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from imgcls import __version__
from imgcls.cli import commands, flags
from imgcls.config import TTA_MODES
from imgcls.engine import ENGINES

os.environ.setdefault(
    "TF_CPP_MIN_LOG_LEVEL", "3"
)  # hide TensorFlow's C++ log lines; errors still raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgcls",
        description=(
            "Image classification with Keras: prepare data, train, tune, evaluate, predict, "
            "export, serve; review and grow the data."
        ),
    )
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_prepare, _train, _evaluate, _explain, _calibrate, _predict, _export, _serve,
                _tune, _suggest, _review, _models):  # fmt: skip
        add(sub)
    return parser


def _prepare(sub) -> None:
    from imgcls.config import PrepareConfig

    p = sub.add_parser(
        "prepare", help="scan, clean, split and cache DATA; write a report of every issue"
    )
    p.add_argument("data", help="folder per class (optionally train/val/test) or CSV manifest")
    p.add_argument(
        "--out",
        required=True,
        help="folder for manifest.csv, the pixel cache, report.json and report.html",
    )
    flags.add_flags(p, PrepareConfig)
    p.add_argument(
        "--from-run",
        metavar="RUN",
        nargs="+",
        help="with --label-issues: probabilities from these runs' models, each image scored by "
        "the runs not trained on it (e.g. two runs, one per half of DATA); default: k-fold "
        "cross-validation of a quick model",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    # scanning never needs TensorFlow: skip its import
    p.set_defaults(func=commands.cmd_prepare, keras=False)


def _train(sub) -> None:
    from imgcls.config import TrainConfig

    p = sub.add_parser("train", help="train a model and write a run folder")
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
    flags.add_flags(p, TrainConfig)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--no-compile-cache", action="store_true",
        help="JAX: compile every step afresh instead of reusing $IMGCLS_CACHE/jax",
    )  # fmt: skip
    job = p.add_argument_group("data-parallel job over several processes (JAX backend)")
    job.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    job.add_argument("--num-processes", type=int, metavar="N", help="processes in the job")
    job.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1")
    p.set_defaults(func=commands.cmd_train)


def _evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a run on a data set (default: its test split)")
    p.add_argument("run", help="run folder written by `imgcls train`")
    p.add_argument(
        "data", help="the run's data (its test split is used) or other labelled data (all of it)"
    )
    p.add_argument("--out", required=True, help="folder for metrics.json and report.html")
    p.add_argument(
        "--split", choices=["test", "val", "train", "all"], help="split of the run's own data"
    )
    p.add_argument("--corrections", metavar="CSV", help="decisions of `imgcls review` to apply "
                   "(default: DATA/.imgcls/corrections.csv when DATA is a folder that has one)")  # fmt: skip
    _tta_arg(p)
    _engine_arg(p)
    p.set_defaults(func=commands.cmd_evaluate)


def _explain(sub) -> None:
    p = sub.add_parser(
        "explain", help="filters, feature maps, Grad-CAM and top classes for one image"
    )
    p.add_argument("run", help="run folder written by `imgcls train`")
    p.add_argument("image", help="an image file")
    p.add_argument("--out", required=True, help="folder for the PNGs and explain.json")
    p.add_argument("--top-k", type=int, default=5, help="classes shown (default 5)")
    p.set_defaults(func=commands.cmd_explain)


def _suggest(sub) -> None:
    p = sub.add_parser(
        "suggest", help="rank unlabeled images by how much labeling them should help a run"
    )
    p.add_argument("run", help="run folder written by `imgcls train`")
    p.add_argument("pool", nargs="+", help="unlabeled images: files, folders, globs or a CSV")
    p.add_argument("--n", type=int, required=True, help="how many images to suggest")
    p.add_argument("--out", default="suggest.csv", help="the ranked list (default suggest.csv)")
    p.set_defaults(func=commands.cmd_suggest)


def _review(sub) -> None:
    p = sub.add_parser(
        "review", help="a local page to decide on what prepare (and a run) found in DATA"
    )
    p.add_argument("data", help="the folder per class to review (it is never changed)")
    p.add_argument("--run", nargs="+", metavar="RUN", help="suspected wrong labels from these "
                   "runs' predictions, as prepare --from-run (default: a quick model)")  # fmt: skip
    p.add_argument("--corrections", help="decisions file (default DATA/.imgcls/corrections.csv)")
    p.add_argument("--export", metavar="DIR", help="write a corrected copy of DATA (hard links)")
    p.add_argument(
        "--label",
        metavar="CSV",
        help="a suggest.csv of `imgcls suggest`: label its images (labeling mode)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--token", help="require `Authorization: Bearer TOKEN`")
    p.set_defaults(func=commands.cmd_review)


def _calibrate(sub) -> None:
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
    p.set_defaults(func=commands.cmd_calibrate)


def _predict(sub) -> None:
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
    p.set_defaults(func=commands.cmd_predict)


def _export(sub) -> None:
    p = sub.add_parser("export", help="write the run's inference model for ONNX, TF or LiteRT")
    p.add_argument("run", help="run folder written by `imgcls train`")
    p.add_argument("--format", required=True, choices=["onnx", "savedmodel", "litert"])
    p.add_argument("--out", required=True, help="folder for the model file and imgcls.json")
    p.add_argument(
        "--no-tta",
        action="store_true",
        help="leave the run's test-time augmentation out of the graph (one view: faster)",
    )
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="onnx: int8 weights and activations calibrated on training images (4x smaller, "
        "~2.7x faster on CPUs with VNNI; probabilities differ by up to ~0.1)",
    )
    p.add_argument(
        "--calibration",
        metavar="DATA",
        help="images to calibrate --quantize on (default: the run's own training images)",
    )
    p.set_defaults(func=commands.cmd_export)


def _serve(sub) -> None:
    from imgcls.serve.limits import ServeConfig

    p = sub.add_parser("serve", help="an HTTP server: web page, JSON and Open Inference API")
    p.add_argument("run", help="run folder written by `imgcls train`")
    flags.add_flags(p, ServeConfig)
    p.set_defaults(func=commands.cmd_serve)


def _tune(sub) -> None:
    from imgcls.tune.settings import TuneSettings

    p = sub.add_parser(
        "tune", help="search training settings on the validation split, then test once"
    )
    p.add_argument("data", nargs="?", help="labelled data, as `imgcls train` takes it")
    p.add_argument("--out", help="new folder for the search (trials, best/, report.html)")
    p.add_argument("--resume", metavar="DIR", help="continue the search in DIR after a stop")
    flags.add_flags(p, TuneSettings)
    p.add_argument(
        "--chief", metavar="HOST:PORT", help="serve the oracle here to workers on other hosts"
    )
    p.add_argument(
        "--worker", metavar="HOST:PORT", help="run trials for the chief at HOST:PORT (same DATA)"
    )
    p.add_argument("--worker-id", help="this worker's name (default: host name and process id)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=commands.cmd_tune)


def _models(sub) -> None:
    p = sub.add_parser("models", help="list registered models with their parameter counts")
    p.add_argument("--image-size", type=int, nargs=2, default=(32, 32), metavar=("H", "W"))
    p.add_argument("--classes", type=int, default=10)
    p.set_defaults(func=commands.cmd_models)


def _engine_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="keras",
        help="keras; keras-bf16: Keras computing in bfloat16, probabilities within a few "
        "hundredths, 1.6-2.8x faster for fast and classic on CPUs with AMX (slower for "
        "EfficientNet and MobileNet); onnx: ONNX Runtime on an export cached in the run folder, "
        "same numbers (one image 4x sooner; 2x the images/s for efficientnet_lite0)",
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


def _onnx_only(args: argparse.Namespace) -> bool:
    """``predict`` and ``serve`` with ``--engine onnx`` need Keras only to make the export the
    first time (:func:`imgcls.bundle.load_model` imports it then)."""
    return getattr(args, "engine", None) == "onnx" and args.func in (
        commands.cmd_predict,
        commands.cmd_serve,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``imgcls`` console script."""
    from imgcls.errors import ImgclsError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "keras", True):
            from imgcls import backend

            if getattr(args, "no_compile_cache", False):
                os.environ[backend.COMPILE_CACHE_ENV] = "0"
            backend.select(_backend_asked(args))
            # ONNX Runtime on a cached export: no Keras (3 s) at all; `train` imports it while
            # a child process reads the data (imgcls/train/ahead.py)
            if not _onnx_only(args) and args.func is not commands.cmd_train:
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
