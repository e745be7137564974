"""`imgcls prepare`: every kind of bad file gives one issue row, the cache feeds training."""

from __future__ import annotations

import csv
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from imgcls.cli import main
from imgcls.data.pipeline import decode_images
from imgcls.data.prepare import prepare
from imgcls.data.sources import load_source
from imgcls.errors import ImgclsError
from tests.conftest import CIFAR_TRAIN, make_image, write_folder

SIZE = ["--image-size", "24", "24", "--quiet"]


def _png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height``: refused before any pixel is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _random(seed: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _smooth(seed: int, size: int = 32) -> Image.Image:
    """A photo-like image (smooth colour blobs): what near-duplicate detection is meant for."""
    return Image.fromarray(_random(seed, size=4)).resize((size, size), Image.Resampling.BICUBIC)


def _near_copy(image: Image.Image, path: Path) -> None:
    """Brighter by 10% and re-encoded as JPEG: the same picture, different bytes."""
    ImageEnhance.Brightness(image.convert("RGB")).enhance(1.1).save(path, quality=90)


def _bad_folder(root: Path) -> tuple[Path, dict[str, str]]:
    """Three clean classes plus one file of every bad kind; returns (folder, {path: expected kind})."""
    write_folder(root, per_class=12)
    expected = {}

    def add(
        rel: str, kind: str, data: bytes | None = None, image: Image.Image | None = None, **save
    ) -> None:
        path = root / rel
        if image is not None:
            image.save(path, **save)
        else:
            path.write_bytes(data)
        expected[rel] = kind

    jpeg = io.BytesIO()
    Image.fromarray(_random(1)).save(jpeg, format="JPEG")
    add("cats/empty.jpg", "unreadable", b"")
    add("cats/truncated.jpg", "unreadable", jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    add("cats/noise.png", "not_an_image", np.random.default_rng(2).bytes(500))
    add("dogs/notes.jpg", "not_an_image", b"this is a text file, not a photo\n")
    add(
        "dogs/really_png.jpg", "extension_mismatch", image=Image.fromarray(_random(3)), format="PNG"
    )
    add("dogs/cmyk.jpg", "converted", image=Image.fromarray(_random(4)).convert("CMYK"))
    palette = Image.fromarray(_random(5)).convert("P")
    palette.info["transparency"] = 0
    add("fish/palette.png", "converted", image=palette, transparency=0)
    deep = Image.fromarray(
        (np.random.default_rng(6).integers(0, 65535, (24, 24))).astype(np.uint16)
    )
    add("fish/deep16.png", "converted", image=deep)
    add("fish/tiny.png", "too_small", image=Image.fromarray(_random(7, size=4)))
    add("fish/huge.png", "too_large", _png_with_header(20000, 20000))
    shutil.copy(root / "cats" / "000.png", root / "cats" / "copy_of_000.png")
    expected["cats/copy_of_000.png"] = "exact_duplicate"
    shutil.copy(root / "dogs" / "000.png", root / "cats" / "dog_in_cats.png")
    expected["cats/dog_in_cats.png"] = "conflicting_labels"
    expected["dogs/000.png"] = "conflicting_labels"
    _smooth(8).save(root / "fish" / "photo.png")
    _near_copy(_smooth(8), root / "fish" / "photo_brighter.jpg")
    expected["fish/photo_brighter.jpg"] = "near_duplicate"
    add(".DS_Store", "ignored", b"\0\0\0\1Bud1")
    add("cats/.hidden.png", "ignored", b"")
    return root, expected


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path, dict[str, str], int]:
    base = tmp_path_factory.mktemp("prep")
    data, expected = _bad_folder(base / "data")
    out = base / "out"
    code = main(["prepare", str(data), "--out", str(out), *SIZE])
    return data, out, expected, code


def test_every_bad_file_gives_exactly_one_issue_of_its_kind(prepared):
    data, out, expected, code = prepared
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    by_path: dict[str, list[str]] = {}
    for row in report["issues"]:
        assert set(row) >= {"path", "kind", "detail"} and row["detail"]
        by_path.setdefault(row["path"], []).append(row["kind"])
    for path, kind in expected.items():
        assert by_path.get(path) == [kind], (path, by_path.get(path))
    clean = [p for p in by_path if p not in expected]
    assert clean == [], f"unexpected issues: {[(p, by_path[p]) for p in clean]}"
    assert (
        "palette" in json.dumps(report)
        and "16-bit" in json.dumps(report)
        and "CMYK" in json.dumps(report)
    )


def test_manifest_cache_and_html(prepared):
    data, out, expected, _ = prepared
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    usable = (
        36 + 6 - 1
    )  # 12 per class, + png-as-jpg, cmyk, palette, 16-bit, photo, brighter; - dogs/000
    assert len(rows) == usable
    assert set(rows[0]) >= {"path", "sha256", "label", "split", "width", "height", "format", "mode"}
    cmyk = next(r for r in rows if r["path"].endswith("cmyk.jpg"))
    assert (cmyk["format"], cmyk["mode"], cmyk["label"]) == ("JPEG", "CMYK", "dogs")
    report = json.loads((out / "report.json").read_text())
    assert (
        report["n_usable"] == usable
        and sum(c["total"] for c in report["counts"].values()) == usable
    )
    cache = np.load(out / "cache_24x24.npy", mmap_mode="r")
    assert cache.shape == (usable, 24, 24, 3) and cache.dtype == np.uint8
    assert not list(out.glob(".tmp-*"))
    images = load_source(out)  # a prepared folder is DATA for every command, with its cached pixels
    assert len(images) == usable and images.cache is not None
    from imgcls.data.sizes import typical_size

    assert typical_size(images) == (24, 24)  # mixed-size files, but training uses the cache's size
    pixels, ok, left_out, _ = decode_images(images, (24, 24))
    assert ok.all() and not left_out and np.array_equal(pixels, cache)
    row = next(i for i, r in enumerate(rows) if r["path"].endswith("cats/005.png"))
    assert np.array_equal(
        pixels[row], np.asarray(Image.open(data / "cats" / "005.png").convert("RGB"))
    )
    other_size = decode_images(images, (16, 16)).pixels  # another size decodes the files as before
    assert other_size.shape == (usable, 16, 16, 3)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    assert "conflicting_labels" in html and "copy_of_000.png" in html


def test_source_files_are_never_touched(prepared, tmp_path):
    data, out, _, _ = prepared
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    assert main(["prepare", str(data), "--out", str(tmp_path / "again"), *SIZE]) == 0
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == before


def test_on_error_fail_lists_every_bad_file_and_exits_1(prepared, tmp_path, capsys):
    data, _, expected, _ = prepared
    out = tmp_path / "strict"
    assert main(["prepare", str(data), "--out", str(out), "--on-error", "fail", *SIZE]) == 1
    err = capsys.readouterr().err
    for path, kind in expected.items():
        if kind in ("unreadable", "not_an_image", "too_small", "too_large"):
            assert path in err
    assert (out / "report.json").is_file() and not (out / "manifest.csv").exists()


def test_near_duplicates_share_a_split(tmp_path):
    data = write_folder(tmp_path / "d", per_class=20)
    for i in range(
        10
    ):  # near copies (re-encoded brighter JPEGs) must land in their original's split
        _smooth(100 + i).save(data / "cats" / f"{i:03d}.png")
        _near_copy(_smooth(100 + i), data / "cats" / f"{i:03d}_again.jpg")
    result = prepare(data, tmp_path / "out", image_size=(32, 32), val_split=0.3, test_split=0.3)
    with open(tmp_path / "out" / "manifest.csv", newline="") as f:
        split = {r["id"]: r["split"] for r in csv.DictReader(f)}
    assert all(split[f"cats/{i:03d}.png"] == split[f"cats/{i:03d}_again.jpg"] for i in range(10))
    assert (
        len({split[f"cats/{i:03d}.png"] for i in range(10)}) > 1
    )  # groups still spread over splits
    assert result.report["issue_counts"]["near_duplicate"] == 10


def test_predefined_split_leak_is_reported(tmp_path):
    for split in ("train", "test"):
        write_folder(tmp_path / "d" / split, per_class=6, seed=0 if split == "train" else 1)
    shutil.copy(
        tmp_path / "d" / "train" / "cats" / "002.png", tmp_path / "d" / "test" / "cats" / "leak.png"
    )
    report = prepare(tmp_path / "d", tmp_path / "out", image_size=(24, 24)).report
    leaks = [r for r in report["issues"] if r["kind"] == "cross_split_duplicate"]
    assert [r["path"] for r in leaks] == ["test/cats/leak.png"]


def test_imbalance_suggests_balanced_class_weight(tmp_path, capsys):
    data = write_folder(tmp_path / "d", classes=("big",), per_class=40)
    write_folder(data, classes=("small",), per_class=5, seed=3)
    assert main(["prepare", str(data), "--out", str(tmp_path / "o"), *SIZE]) == 0
    assert "--class-weight balanced" in capsys.readouterr().out
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [r["path"] for r in report["issues"] if r["kind"] == "class_imbalance"] == ["small"]


def test_nothing_usable_or_empty_class_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad"
    for name in ("a", "b"):
        (bad / name).mkdir(parents=True)
        (bad / name / "x.jpg").write_bytes(b"not an image")
    assert main(["prepare", str(bad), "--out", str(tmp_path / "o1"), *SIZE]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("imgcls: error:")
        and "none of the 2 files is usable" in err
        and "\n" not in err
    )
    data = write_folder(tmp_path / "d", per_class=5)
    (data / "birds").mkdir()
    assert main(["prepare", str(data), "--out", str(tmp_path / "o2"), *SIZE]) == 2
    assert "birds" in capsys.readouterr().err
    report = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert [r["path"] for r in report["issues"] if r["kind"] == "empty_class"] == ["birds"]
    assert not (tmp_path / "o2" / "manifest.csv").exists()


def test_bad_arguments(image_folder, tmp_path):
    with pytest.raises(ImgclsError, match="on_error"):
        prepare(image_folder, tmp_path / "o", on_error="ignore")
    with pytest.raises(ImgclsError, match="inside DATA"):
        prepare(image_folder, image_folder / "prepared")
    with pytest.raises(ImgclsError, match="built-in"):
        prepare("digits", tmp_path / "o")


FLIPPED = {3: "square", 45: "bar", 90: "stripe"}  # image index -> its wrong label


def noisy_manifest(tmp_path) -> list[tuple[str, str]]:
    """40 32x32 images of each of 3 classes under tmp_path/img, and tmp_path/noisy.csv listing
    them with the labels of :data:`FLIPPED` wrong; returns the true (path, class) rows."""
    rng = np.random.default_rng(0)
    rows = []
    for k, name in enumerate(("stripe", "square", "bar")):
        (tmp_path / "img" / name).mkdir(parents=True)
        for i in range(40):
            Image.fromarray(make_image(k, rng, size=32)).save(
                tmp_path / "img" / name / f"{i:02d}.png"
            )
            rows.append((f"img/{name}/{i:02d}.png", name))
    (tmp_path / "noisy.csv").write_text(
        "path,label\n"
        + "".join(f"{p},{FLIPPED.get(i, label)}\n" for i, (p, label) in enumerate(rows))
    )
    return rows


def test_label_issues_flags_flipped_labels(tmp_path):
    rows = noisy_manifest(tmp_path)
    flipped = FLIPPED
    report = prepare(
        tmp_path / "noisy.csv", tmp_path / "out", image_size=(32, 32), label_issues=True
    ).report
    found = [r for r in report["issues"] if r["kind"] == "label_issue"]
    assert {r["path"] for r in found[:3]} == {rows[i][0] for i in flipped}
    assert found[0]["suggested"] != found[0]["given"]
    assert "label_issue" in (tmp_path / "out" / "report.html").read_text()


def test_label_issues_from_a_trained_run(tmp_path, capsys):
    """--from-run: a model trained on the true labels ranks the three flipped images first."""
    import imgcls
    from imgcls.cli import main

    rows = noisy_manifest(tmp_path)
    run = tmp_path / "run"
    imgcls.train(str(tmp_path / "img"), out=run, model="classic", epochs=12, batch_size=16,
                 image_size=(32, 32), precision="float32", verbose=False,
                 model_args={"filters": (8, 16), "dense_units": 16})  # fmt: skip
    out = tmp_path / "out"
    args = ["prepare", str(tmp_path / "noisy.csv"), "--out", str(out), "--label-issues", "--quiet"]
    assert main([*args, "--from-run", str(run)]) == 0
    report = json.loads((out / "report.json").read_text())
    found = [r for r in report["issues"] if r["kind"] == "label_issue"]
    assert {r["path"] for r in found[:3]} == {rows[i][0] for i in FLIPPED}
    assert f"by run {run}" in found[0]["detail"]
    capsys.readouterr()
    assert main([*args, "--from-run", str(tmp_path / "img")]) == 2  # a folder, not a run
    err = capsys.readouterr().err
    assert "has no bundle.json" in err and len(err.strip().splitlines()) == 1


def test_label_issues_from_two_runs_each_on_half_of_the_data(tmp_path, capsys):
    """--from-run A B, each trained on the other half of the noisy labels (--split-file): every
    image is scored out of sample; the flipped images come first, each with its suggested fix."""
    import imgcls
    from imgcls.cli import main
    from imgcls.data.labels import RELABEL_MIN_PROBABILITY

    rows = noisy_manifest(tmp_path)
    noisy = [line.split(",") for line in (tmp_path / "noisy.csv").read_text().splitlines()[1:]]
    runs = []
    for half in (0, 1):
        split = tmp_path / f"half{half}.csv"
        split.write_text("id,label,split\n" + "".join(
            f"{p},{label},train\n" for i, (p, label) in enumerate(noisy) if i % 2 == half))  # fmt: skip
        runs.append(tmp_path / f"run{half}")
        imgcls.train(str(tmp_path / "noisy.csv"), out=runs[-1], split_file=str(split),
                     model="classic", epochs=12, batch_size=16, image_size=(24, 24),
                     precision="float32", verbose=False,
                     model_args={"filters": (8, 16), "dense_units": 16})  # fmt: skip
    # The runs learned at 24x24, prepare decodes at 32x32: each run scores the files decoded at
    # its own size, so it knows its own half and the other run alone scores that half.
    from imgcls.data.cache import cached_pixels
    from imgcls.predict import RunProbabilities

    paths = [str(tmp_path / p) for p, _ in rows]
    pixels, names = cached_pixels(paths, (32, 32)).pixels, ["bar", "square", "stripe"]
    both = RunProbabilities(runs)(pixels, names, paths)
    np.testing.assert_allclose(both[0::2], RunProbabilities(runs[1])(pixels, names)[0::2])
    np.testing.assert_allclose(both[1::2], RunProbabilities(runs[0])(pixels, names)[1::2])
    out = tmp_path / "out"
    assert main(["prepare", str(tmp_path / "noisy.csv"), "--out", str(out), "--label-issues",
                 "--quiet", "--from-run", *map(str, runs)]) == 0  # fmt: skip
    assert "in sample" not in capsys.readouterr().err  # each image unseen by one run
    found = [r for r in json.loads((out / "report.json").read_text())["issues"]
             if r["kind"] == "label_issue"]  # fmt: skip
    assert {r["path"] for r in found[:3]} == {rows[i][0] for i in FLIPPED}
    for r in found:
        sure = r["suggested_probability"] >= RELABEL_MIN_PROBABILITY
        assert r["action"] == ("relabel" if sure else "exclude"), r
    assert "each image scored by those not trained on it" in found[0]["detail"]


def test_train_reads_the_prepared_folder(prepared, tmp_path):
    import imgcls

    _, out, _, _ = prepared
    result = imgcls.train(
        str(out),
        out=tmp_path / "run",
        epochs=1,
        batch_size=16,
        image_size=(24, 24),
        model="classic",
        verbose=False,
        model_args={"filters": (8,), "dense_units": 8},
    )
    assert result.left_out == []
    with open(tmp_path / "run" / "split.csv", newline="") as f:
        trained = {r["id"]: r["split"] for r in csv.DictReader(f)}
    with open(out / "manifest.csv", newline="") as f:
        assert trained == {
            r["path"]: r["split"] for r in csv.DictReader(f)
        }  # the prepared split is kept


def test_a_large_prepared_cache_is_read_row_by_row(prepared, monkeypatch):
    """Above the in-memory limit a prepared folder's pixels are rows read from its cache file
    when asked for (bounded memory), the same pixels as reading it whole."""
    from imgcls.data import cache
    from imgcls.data.pipeline import decode_images
    from imgcls.data.sources import load_source

    _, out, _, _ = prepared
    images = load_source(str(out))
    whole = decode_images(images, (24, 24)).pixels
    assert isinstance(whole, np.ndarray) and len(whole) > 3
    monkeypatch.setattr(cache, "IN_MEMORY_MAX_BYTES", 100)  # as if the folder were large
    rows = decode_images(images, (24, 24)).pixels
    assert isinstance(rows, cache.DiskRows) and rows.shape == whole.shape
    np.testing.assert_array_equal(np.asarray(rows), whole)
    np.testing.assert_array_equal(rows.take([3, 0])[[1, 0]], whole[[0, 3]])
    from imgcls.models.fast import fast, init_from_data  # `fast` whitens from either

    kernels = []
    for pixels in (whole, rows):
        model = fast((24, 24, 3), 3)
        init_from_data(model, pixels)
        kernels.append(model.get_layer("whiten").get_weights()[0])
    np.testing.assert_array_equal(*kernels)


def test_train_on_a_raw_folder_with_bad_files_names_them(prepared, tmp_path, capsys):
    data, _, expected, _ = prepared
    code = main(
        [
            "train",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--image-size",
            "16",
            "16",
            "--model",
            "classic",
            "--model-arg",
            "filters=[8]",
            "--model-arg",
            "dense_units=8",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    for path, kind in expected.items():
        if kind in ("unreadable", "not_an_image", "too_large"):
            assert path.split("/")[-1] in err, path


@pytest.mark.skipif(not CIFAR_TRAIN.is_dir(), reason="needs ../shared/datasets/cifar10/train")
def test_cifar_sample_prepares_cleanly(tmp_path):
    rows = ["path,label"]
    for name in sorted(p.name for p in CIFAR_TRAIN.iterdir())[:3]:
        rows += [
            f"{CIFAR_TRAIN / name / f},{name}" for f in sorted((CIFAR_TRAIN / name).iterdir())[:100]
        ]
    (tmp_path / "sample.csv").write_text("\n".join(rows) + "\n")
    report = prepare(tmp_path / "sample.csv", tmp_path / "out").report
    assert report["image_size"] == [32, 32] and report["n_usable"] >= 295
