"""Batch prediction into Parquet: local processes and a local Ray give the predictions of one
process; a stopped job resumes by its finished parts."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import imgcls

pq = pytest.importorskip("pyarrow.parquet", reason="needs pyarrow: pip install 'imgcls[batch]'")


@pytest.fixture(scope="module")
def files(trained_run, tmp_path_factory) -> list[str]:
    """The run's images plus one file that is not an image."""
    folder = tmp_path_factory.mktemp("batch")
    bad = folder / "broken.png"
    bad.write_bytes(b"not an image")
    return [*sorted(str(p) for p in trained_run[1].glob("*/*.png"))[:40], str(bad)]


def expected(run: Path, files: list[str]) -> np.ndarray:
    return imgcls.load(run).predict_proba(files[:-1])


def read(path: Path):
    return pq.read_table(path).to_pandas()


def test_local_processes_write_what_one_process_predicts(trained_run, files, tmp_path):
    from imgcls.batch import predict_to_parquet

    run = trained_run[0]
    out = predict_to_parquet(run, files, tmp_path / "p.parquet", workers=2, part_images=16)
    table = read(out)
    assert list(table["path"]) == files
    probs = table[[f"p_{c}" for c in ("cats", "dogs", "fish")]].to_numpy()
    np.testing.assert_allclose(probs[:-1], expected(run, files), atol=1e-6)
    assert table["error"].iloc[-1].startswith("not_an_image") and np.isnan(probs[-1]).all()
    assert table["label"].iloc[0] == ["cats", "dogs", "fish"][int(probs[0].argmax())]
    # Stopped after two of three parts: a rerun predicts only the missing part.
    parts = sorted((tmp_path / "p.parquet.parts").glob("part-*.parquet"))
    assert len(parts) == 3
    parts[2].unlink()
    (tmp_path / "p.parquet").unlink()
    kept = parts[0].stat().st_mtime_ns
    predict_to_parquet(run, files, tmp_path / "p.parquet", workers=1, part_images=16)
    assert parts[0].stat().st_mtime_ns == kept and parts[2].is_file()
    assert read(tmp_path / "p.parquet").equals(table)
    with pytest.raises(imgcls.ImgclsError, match="another prediction job"):
        predict_to_parquet(run, files[:5], tmp_path / "p.parquet", part_images=16)


@pytest.mark.skipif(
    not importlib.util.find_spec("ray"), reason="needs ray: pip install 'imgcls[batch]'"
)
@pytest.mark.slow  # ~65 s, most of it starting a local Ray cluster
def test_ray_data_writes_the_same_file(trained_run, files, tmp_path):
    import ray

    from imgcls.batch import predict_to_parquet

    run = trained_run[0]
    local = predict_to_parquet(run, files, tmp_path / "local.parquet", workers=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = predict_to_parquet(run, files, tmp_path / "ray.parquet", ray="local", workers=2)
    finally:
        ray.shutdown()
    a, b = read(local), read(on_ray)
    assert list(b["path"]) == files and list(b["error"].isna()) == list(a["error"].isna())
    cols = [c for c in a.columns if c.startswith("p_")]
    np.testing.assert_allclose(b[cols].to_numpy(), a[cols].to_numpy(), atol=1e-6)


@pytest.mark.slow  # ~9 s of importing Ray, with the Ray Data test above
def test_a_ray_address_that_does_not_answer_is_one_line(trained_run, files, tmp_path):
    pytest.importorskip("ray")
    r = subprocess.run(
        [sys.executable, "-m", "imgcls", "predict", str(trained_run[0]), files[0], "--out",
         str(tmp_path / "x.parquet"), "--ray", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "does not answer" in r.stderr.splitlines()[-1]
    assert not (tmp_path / "x.parquet").exists()
    shutil.rmtree(tmp_path / "x.parquet.parts", ignore_errors=True)
