"""Data sources, the shared decoder and the split: what a user gets from DATA."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgcls.data.decode import DecodeError, load_image, read_image
from imgcls.data.sources import load_source
from imgcls.data.split import assign_splits
from imgcls.errors import ImgclsError
from tests.conftest import write_folder


def test_folder_per_class(image_folder):
    images = load_source(image_folder)
    assert images.class_names == ["cats", "dogs", "fish"]
    assert len(images) == 90
    assert images.class_counts() == {"cats": 30, "dogs": 30, "fish": 30}
    assert images.ids[0] == "cats/000.png"
    assert images.splits is None


def test_presplit_folder(tmp_path):
    for split in ("train", "val", "test"):
        write_folder(tmp_path / "d" / split, per_class=4)
    images = load_source(tmp_path / "d")
    assert sorted(set(images.splits)) == ["test", "train", "val"]
    assert images.class_names == ["cats", "dogs", "fish"]
    splits = assign_splits(images.labels, 0.5, 0.5, seed=0, predefined=images.splits)
    assert (splits == images.splits).all()  # predefined splits are kept as they are


def test_csv_manifest(image_folder):
    csv = image_folder / "list.csv"
    csv.write_text(
        "path,label,split\ncats/000.png,cat,train\ndogs/000.png,dog,test\ncats/001.png,cat,val\n"
    )
    images = load_source(csv)
    assert images.class_names == ["cat", "dog"]
    assert list(images.splits) == ["train", "test", "val"]
    assert images.paths[1].endswith("dogs/000.png")


def test_digits_builtin():
    images = load_source("digits")
    assert len(images) == 1797 and images.images.shape == (1797, 8, 8, 3)
    assert images.images.dtype == np.uint8 and images.images.max() == 255
    assert "flip" not in images.augment  # a mirrored 2 is not a 2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "DATA not found"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no images found"),
        (lambda p: write_folder(p / "one", classes=("only",), per_class=3), "at least 2"),
    ],
)
def test_bad_data_is_named(tmp_path, make, message):
    with pytest.raises(ImgclsError, match=message):
        load_source(make(tmp_path))


def test_csv_problems_are_named(image_folder):
    bad_columns = image_folder / "a.csv"
    bad_columns.write_text("file,class\nx.png,cat\n")
    with pytest.raises(ImgclsError, match=r"columns path,label"):
        load_source(bad_columns)
    missing = image_folder / "b.csv"
    missing.write_text("path,label\ncats/000.png,cat\nnope/1.png,dog\n")
    with pytest.raises(ImgclsError, match=r"line 3 'nope/1.png'"):
        load_source(missing)


def test_split_is_stratified_and_seeded():
    labels = np.repeat(np.arange(4), [100, 50, 20, 10])
    a = assign_splits(labels, 0.1, 0.2, seed=7)
    assert (a == assign_splits(labels, 0.1, 0.2, seed=7)).all()
    assert (a != assign_splits(labels, 0.1, 0.2, seed=8)).any()
    for c, n in zip(range(4), [100, 50, 20, 10], strict=True):
        member = a[labels == c]
        assert (member == "test").sum() == round(n * 0.2)
        assert (member == "val").sum() == round(n * 0.1)


def test_split_keeps_a_training_image_per_class():
    labels = np.array([0, 1, 1, 1])
    splits = assign_splits(labels, 0.5, 0.5, seed=0)
    assert splits[0] == "train"


def test_decode_applies_exif_orientation(tmp_path):
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, :10] = 255  # left half white
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.shape == (20, 10, 3)  # displayed upright: taller than wide
    assert out[:10].mean() > 200 and out[10:].mean() < 50  # white half is now on top


@pytest.mark.parametrize(
    "mode, expect", [("CMYK", "CMYK"), ("P", "palette"), ("LA", "alpha"), ("L", "grayscale")]
)
def test_decode_converts_any_mode_to_rgb(tmp_path, mode, expect):
    img = Image.new("RGB", (12, 12), (200, 30, 30)).convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    pixels, info = read_image(path, (8, 8))
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    assert expect in info.conversion


def test_decode_16_bit_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((6, 6), 65535, np.uint16)).save(tmp_path / "w.png")
    Image.fromarray(np.full((6, 6), 32768, np.uint16)).save(tmp_path / "g.png")
    assert load_image(tmp_path / "w.png").min() == 255
    assert 120 <= load_image(tmp_path / "g.png").mean() <= 135


@pytest.mark.parametrize(
    "content, kind", [(b"", "unreadable"), (b"hello world" * 10, "not_an_image")]
)
def test_decode_errors_have_a_kind(tmp_path, content, kind):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(DecodeError) as e:
        load_image(path)
    assert e.value.kind == kind and str(path) in str(e.value)


def test_evaluation_batches_of_a_job_split_evenly_and_keep_every_image_they_can():
    """Two processes, 11 images, batches of 4: 4, 4 and a last batch trimmed from 3 to 2."""
    from imgcls.data.pipeline import EpochPlan, batches

    x = np.arange(11 * 2 * 2 * 3, dtype=np.float32).reshape(11, 2, 2, 3)
    y = np.arange(11, dtype=np.int32)
    seen = []
    for process in range(2):
        parts = batches(x, y, EpochPlan(4, 0, 0, shard=(process, 2)), ordered=True)
        labels = [np.asarray(parts[i][1]) for i in range(len(parts))]
        assert [len(b) for b in labels] == [2, 2, 1]
        seen += [int(v) for b in labels for v in b]
    assert sorted(seen) == list(range(10))


def test_batches_made_ahead_on_a_thread_are_the_batches_made_in_turn():
    """PyTorch's feeder (prefetch) gives the same batches as the plain one, from a resumed step
    too; asked twice or out of order it still answers right; its thread ends with the epoch,
    and also when the epoch is dropped half-way."""
    import gc
    import threading

    from imgcls.data.pipeline import EpochPlan, batches

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), np.arange(40, dtype=np.int32) % 4
    alive = lambda: [t for t in threading.enumerate() if t.name == "imgcls-prefetch"]  # noqa: E731
    for skip in (0, 3):
        plan = EpochPlan(4, 7, 2, ("flip", "translate"), skip_steps=skip)
        plain, ahead = batches(x, y, plan, None, 4), batches(x, y, plan, None, 4, prefetch=2)
        assert len(ahead) == len(plain) == 10 - skip
        for i in range(len(plain)):
            for a, b in zip(ahead[i], plain[i], strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        last = len(plain) - 1  # asked again (as Keras may peek): the same batch
        np.testing.assert_array_equal(np.asarray(ahead[last][0]), np.asarray(plain[last][0]))
        ahead.prefetch.thread.join(timeout=5)
        assert not ahead.prefetch.thread.is_alive()
    plan = EpochPlan(4, 7, 2, ("flip",))
    jumpy = batches(x, y, plan, None, 4, prefetch=2)
    np.testing.assert_array_equal(np.asarray(jumpy[5][0]), np.asarray(batches(x, y, plan)[5][0]))
    dropped = batches(x, y, plan, None, 4, prefetch=2)
    dropped[0]
    del dropped, jumpy
    gc.collect()
    for t in alive():
        t.join(timeout=5)
    assert not alive()


def test_flips_and_shifts_move_whole_pixels_by_the_documented_border_rule():
    """The one augmentation against NumPy: flips and whole-pixel shifts read the image mirrored
    with the edge pixel repeated (np.pad's "symmetric"), exactly, gathered or resampled."""
    from keras import ops

    from imgcls.data.augment import apply_params, draw_params

    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (12, 9, 11, 3), dtype=np.uint8)
    params = draw_params(rng, 12, 9, 11, ("flip", "translate"), translate=3)
    t = params["transform"]
    for resample in (False, True):
        got = ops.convert_to_numpy(apply_params(x, t, None, resample=resample))
        for i in range(len(x)):
            flip = t[i, 0] < 0
            dy, dx = int(t[i, 5]), int(t[i, 2]) - (10 if flip else 0)
            padded = np.pad(x[i], ((3, 3), (3, 3), (0, 0)), mode="symmetric")
            want = padded[3 + dy : 3 + dy + 9, 3 + dx : 3 + dx + 11]
            np.testing.assert_array_equal(got[i], want[:, ::-1] if flip else want)
    assert (t[:, 0] < 0).any() and (t[:, 0] > 0).any() and (np.abs(t[:, 5]) == 3).any()


def test_class_weights_reach_every_training_batch():
    """With --class-weight balanced each batch carries its images' class weights, the rarer
    class weighing more (TensorFlow's tf.data feeder)."""
    from imgcls.data.pipeline import EpochPlan, train_dataset
    from imgcls.train.setup import class_weights

    y = np.array([0] * 6 + [1] * 18, np.int32)
    x = np.zeros((24, 8, 8, 3), np.uint8)
    weights = class_weights(y, 2)
    assert weights[0] == pytest.approx(2.0) and weights[1] == pytest.approx(2 / 3)
    batches = list(train_dataset(x, y, EpochPlan(8, 0, 0, ("flip",)), weights, 2))
    assert len(batches) == 3
    for _, labels, sample_weight in batches:
        expected = weights[np.asarray(labels).argmax(axis=1)]
        np.testing.assert_allclose(np.asarray(sample_weight), expected, rtol=1e-6)


def test_decoded_pixels_are_cached_reused_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    """A second decode of the same files reads the disk cache (no file is opened); a changed
    file gets a new cache; large sets come back as rows read from disk, equal to the arrays."""
    from imgcls.data import cache, scan
    from imgcls.data.hashing import dhash
    from imgcls.data.pipeline import decode_images

    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "cache"))
    data = write_folder(tmp_path / "data", per_class=5)
    (data / "cats" / "bad.png").write_bytes(b"not an image")
    images = load_source(data)
    first, ok, issues, _ = decode_images(images, (12, 12))
    assert isinstance(first, np.ndarray) and first.shape == (15, 12, 12, 3) and ok.sum() == 15
    assert [i["kind"] for i in issues] == ["not_an_image"] and "bad.png" in issues[0]["path"]
    assert len(list((tmp_path / "cache" / "pixels").glob("*.u8"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(scan, "scan_files", refuse)
    again, ok2, issues2, hashes = decode_images(images, (12, 12))
    np.testing.assert_array_equal(again, first)
    assert (ok2 == ok).all() and issues2 == issues
    assert hashes.tolist() == [dhash(x) for x in first]  # kept beside the pixels, not redone
    monkeypatch.setattr(cache, "IN_MEMORY_MAX_BYTES", 100)  # as if the set were too large
    rows = decode_images(images, (12, 12)).pixels
    assert isinstance(rows, cache.DiskRows) and rows.shape == first.shape
    np.testing.assert_array_equal(rows[[7, 2, 3]], first[[7, 2, 3]])
    np.testing.assert_array_equal(rows[4:9], first[4:9])
    np.testing.assert_array_equal(np.asarray(rows.take([1, 0])), first[[1, 0]])
    with pytest.raises(AssertionError, match="decoded again"):  # a changed file: a new cache
        Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(data / "dogs" / "000.png")
        decode_images(load_source(data), (12, 12))
