"""Batch prediction over many files into one Parquet file, on local processes or a Ray cluster.

:func:`predict_to_parquet` cuts the file list into parts of :data:`PART_IMAGES` images. Each
part is decoded and predicted by a worker holding one loaded model (a local process, or a Ray
Data actor), written atomically as ``OUT.parts/part-NNNNN.parquet``, and a rerun of the same
command skips the parts already written, so a job stopped at any moment resumes where it was.
At the end the parts are joined, in order, into ``OUT``. Both ways write the same columns:
``path``, ``label``, ``probability``, ``error`` and one ``p_<class>`` per class.

    imgcls predict runs/pets photos/ --out predictions.parquet            # local processes
    imgcls predict runs/pets photos/ --out predictions.parquet --ray      # a local Ray
    imgcls predict runs/pets photos/ --out predictions.parquet --ray ray://head:10001
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from imgcls.errors import ImgclsError, check, require
from imgcls.io import atomic_path, write_json

PART_IMAGES = 2048  # images per part: a resumed job redoes at most one part per worker
RAY_BATCH = 64  # images per Ray Data batch handed to an actor
BLOCKS_PER_WORKER = 8  # blocks per actor the file list is cut into: a block feeds one actor
RAY_PROBE_S = 5.0  # seconds to wait for a Ray address to accept a connection


def predict_to_parquet(
    run: str | Path,
    paths: list[str],
    out: str | Path,
    ray: str | None = None,
    workers: int | None = None,
    engine: str = "keras",
    part_images: int = PART_IMAGES,
) -> Path:
    """Predict every file in ``paths`` with RUN and write ``out`` (Parquet).

    Args:
        run: a run folder written by ``imgcls train``.
        paths: image files (decoded in the workers).
        out: the Parquet file to write; ``out.parts/`` holds the finished parts meanwhile.
        ray: ``None`` for local processes, ``"local"`` to start a Ray on this machine, or the
            address of a Ray cluster (``ray://host:10001``, ``auto``).
        workers: processes or Ray actors (default: the CPU count; one model each).
        engine: ``keras``, ``keras-bf16`` or ``onnx`` (see :mod:`imgcls.engine`).
        part_images: images per part.

    Returns:
        ``out``.

    Raises:
        ImgclsError: Ray or pyarrow missing, a Ray address that does not answer, a worker that
            died (rerun to resume), or ``out.parts`` left by another job.
    """
    from imgcls.bundle import RunFolder, read_meta

    check(paths, "no image files to predict")
    require("pyarrow", why="writing Parquet", extra="batch")
    read_meta(run)  # RUN must be a finished run before any worker starts
    out = Path(out)
    parts_dir = out.with_name(out.name + ".parts")
    parts = [paths[i : i + part_images] for i in range(0, len(paths), part_images)]
    _claim(parts_dir, RunFolder(run).model, paths, part_images)
    todo = [k for k in range(len(parts)) if not _part(parts_dir, k).is_file()]
    workers = max(1, workers or os.cpu_count() or 1)
    if todo and ray is None:
        _local(run, parts, todo, parts_dir, workers, engine)
    elif todo:
        _ray(run, parts, todo, parts_dir, workers, engine, ray)
    _join(parts_dir, len(parts), out)
    return out


def _columns(classes: list[str], paths: list[str], probs: np.ndarray, errors: list) -> dict:
    """The output columns of one part."""
    best = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    failed = np.array([e is not None for e in errors], dtype=bool)
    cols = {
        "path": list(paths),
        "label": [None if bad else classes[j] for j, bad in zip(best, failed, strict=True)],
        "probability": [
            None if bad else float(probs[i, j])
            for i, (j, bad) in enumerate(zip(best, failed, strict=True))
        ],
        "error": list(errors),
    }
    for c, name in enumerate(classes):
        cols[f"p_{name}"] = np.where(failed, np.nan, probs[:, c]).astype(np.float32)
    return cols


def _predict_part(predictor, paths: list[str]) -> dict:
    """Decode ``paths`` (bad files get an error, not an exception) and predict them."""
    from imgcls.data.decode import DecodeError

    pixels = np.zeros((len(paths), *predictor.image_size, 3), np.uint8)
    errors: list[str | None] = [None] * len(paths)
    for i, path in enumerate(paths):
        try:
            pixels[i] = predictor.decode(path)
        except DecodeError as e:
            errors[i] = f"{e.kind}: {e.detail}"
    probs = predictor.predict_pixels(pixels)
    return _columns(predictor.classes_, paths, probs, errors)


_WORKER = {}  # the model each local worker process loads once


def _init_worker(run: str, engine: str) -> None:
    from imgcls.backend import import_keras_quietly
    from imgcls.predict import Predictor

    import_keras_quietly()
    _WORKER["predictor"] = Predictor(run, engine=engine)


def _local_part(job: tuple[int, list[str], str]) -> int:
    k, paths, parts_dir = job
    _write_part(Path(parts_dir), k, _predict_part(_WORKER["predictor"], paths))
    return k


def _local(run, parts, todo, parts_dir: Path, workers: int, engine: str) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    if engine == "onnx":  # export once here, not once per worker
        from imgcls.engine import cached_onnx
        from imgcls.predict import Predictor

        p = Predictor(run)
        cached_onnx(run, p.tta, p.temperature)
    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive a fork
    jobs = [(k, parts[k], str(parts_dir)) for k in todo]
    try:
        with ProcessPoolExecutor(
            min(workers, len(jobs)), context, _init_worker, (str(run), engine)
        ) as pool:
            for _ in pool.map(_local_part, jobs):
                pass
    except BrokenProcessPool:
        raise ImgclsError(
            f"a prediction worker died; the finished parts are kept in {parts_dir}: run the same "
            "command again to resume"
        ) from None


class _RayPredictor:
    """A Ray Data actor: one loaded model, called on batches of ``{"path": [...]}``."""

    def __init__(self, run: str, engine: str):
        from imgcls.backend import import_keras_quietly
        from imgcls.predict import Predictor

        import_keras_quietly()
        self.predictor = Predictor(run, engine=engine)

    def __call__(self, batch: dict) -> dict:
        columns = _predict_part(self.predictor, [str(p) for p in batch["path"]])
        return {"part": batch["part"], "order": batch["order"], **columns}


def _ray(run, parts, todo, parts_dir: Path, workers: int, engine: str, address: str) -> None:
    require("ray", why="`--ray`", extra="batch")
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    if not ray.is_initialized() and address not in ("local", "auto"):
        _probe(address)
    try:
        if not ray.is_initialized():
            if address == "local":
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds for an address that is not there
        raise ImgclsError(
            f"`ray` address {address} does not answer ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:160]}); start a cluster (`ray start --head`) or drop --ray"
        ) from None
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # One pipeline and one actor pool for every missing part; rows come back in any order,
    # and a part is written as soon as all its rows are in.
    rows = pa.table({
        "path": [p for k in todo for p in parts[k]],
        "part": np.repeat(todo, [len(parts[k]) for k in todo]),
        "order": np.concatenate([np.arange(len(parts[k])) for k in todo]),
    })  # fmt: skip
    # Cut here, not with Dataset.repartition: its tasks need a CPU that the actors already hold.
    size = -(-len(rows) // min(workers * BLOCKS_PER_WORKER, max(1, len(rows) // RAY_BATCH)))
    blocks = [rows.slice(i, size) for i in range(0, len(rows), size)]
    ds = ray.data.from_arrow(blocks).map_batches(
        _RayPredictor, fn_constructor_kwargs={"run": str(Path(run).resolve()), "engine": engine},
        batch_size=RAY_BATCH, concurrency=workers, num_cpus=1, batch_format="numpy",
    )  # fmt: skip
    pending: dict[int, list] = {k: [] for k in todo}
    done: dict[int, int] = dict.fromkeys(todo, 0)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for k in pc.unique(batch["part"]).to_pylist():
            piece = batch.filter(pc.equal(batch["part"], k))
            pending[k].append(piece)
            done[k] += len(piece)
            if done[k] == len(parts[k]):
                table = pa.concat_tables(pending.pop(k))
                table = table.take(pc.sort_indices(table, [("order", "ascending")]))
                _write_part(parts_dir, k, table.drop(["part", "order"]))


def _probe(address: str) -> None:
    """Fail in seconds, not Ray's minutes of retries, when nothing listens at ``address``."""
    import socket

    host, _, port = address.split("://")[-1].rpartition(":")
    check(
        bool(host) and port.isdigit(),
        f"`ray` must be local, auto or HOST:PORT (ray://HOST:PORT). Received: ray={address}",
    )
    try:
        socket.create_connection((host, int(port)), timeout=RAY_PROBE_S).close()
    except OSError as e:
        raise ImgclsError(
            f"`ray` address {address} does not answer ({e.strerror or e}); start a cluster "
            "(`ray start --head`) or drop --ray"
        ) from None


def _part(parts_dir: Path, k: int) -> Path:
    return parts_dir / f"part-{k:05d}.parquet"


def _write_part(parts_dir: Path, k: int, columns) -> None:
    """Write one part (a dict of columns or an Arrow table) atomically, in the one schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = columns if isinstance(columns, pa.Table) else pa.table(columns)
    schema = pa.schema(
        [("path", pa.string()), ("label", pa.string()), ("probability", pa.float64()),
         ("error", pa.string())]
        + [(name, pa.float32()) for name in table.column_names if name.startswith("p_")]
    )  # fmt: skip
    with atomic_path(_part(parts_dir, k)) as tmp:
        pq.write_table(table.select(schema.names).cast(schema), tmp)


def _join(parts_dir: Path, n: int, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(_part(parts_dir, k)) for k in range(n)])
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)


def _claim(parts_dir: Path, model: Path, paths: list[str], part_images: int) -> None:
    """Mark ``parts_dir`` as this job's (model, files, part size); refuse another job's."""
    digest = hashlib.sha256()
    with open(model, "rb") as f:
        digest.update(f.read())
    for p in paths:
        digest.update(p.encode() + b"\n")
    job = {"job": digest.hexdigest(), "part_images": part_images, "images": len(paths)}
    marker = parts_dir / "job.json"
    if marker.is_file():
        check(
            json.loads(marker.read_text()) == job,
            f"{parts_dir} holds the parts of another prediction job (other model or files); "
            "delete it or choose another --out",
        )
        return
    parts_dir.mkdir(parents=True, exist_ok=True)
    write_json(marker, job)
