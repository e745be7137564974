"""`imgcls review`: the real server over a generated folder with planted wrong labels and
duplicates, driven over HTTP and with the keyboard in headless Chromium; every decision lands in
the corrections file at once and no image is touched. `--export` writes a corrected copy.
`--label suggest.csv` labels images from outside DATA (``add`` rows) that the data then has."""

from __future__ import annotations

import csv
import hashlib
import shutil
import tempfile
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="the serve extra is not installed")

from imgcls.cli import main  # noqa: E402
from imgcls.data.labels import RELABEL_MIN_PROBABILITY  # noqa: E402
from tests.conftest import Server, save_screenshot, write_folder  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "review_page.png"
VIEWPORT = {"width": 1000, "height": 700}
CLASSES = ["cats", "dogs", "fish"]  # the planted data's


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".imgcls" not in p.parts}  # fmt: skip


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """Three easy classes; two cats filed as dogs, a fish copied into cats (a conflicting
    duplicate) and a dog copied twice (an exact duplicate)."""
    data = write_folder(tmp_path_factory.mktemp("review") / "data", per_class=16)
    for i in (0, 1):
        shutil.move(data / "cats" / f"{i:03d}.png", data / "dogs" / f"was-cat-{i}.png")
    shutil.copy(data / "fish" / "003.png", data / "cats" / "fish-copy.png")
    shutil.copy(data / "dogs" / "004.png", data / "dogs" / "004-copy.png")
    return data


@pytest.fixture
def server(planted, tmp_path):
    data = Path(shutil.copytree(planted, tmp_path / "data"))
    s = Server(data, command="review", ready="/api/items")
    yield s, data
    s.stop()


@pytest.fixture
def to_label(planted, tmp_path) -> tuple[Path, Path, list[Path]]:
    """(DATA, suggest.csv, its images by rank): four images outside DATA, listed out of rank
    order, guessed cats, dogs, fish and a class DATA does not have."""
    data = Path(shutil.copytree(planted, tmp_path / "data"))
    pool = write_folder(tmp_path / "pool", classes=("a", "b"), per_class=2, seed=5)
    images = sorted(pool.rglob("*.png"))
    guesses = ["cats", "dogs", "fish", "birds"]
    lines = [f"{rank},{images[rank - 1]},{guesses[rank - 1]},0.{90 - rank},0.1"
             for rank in (2, 1, 3, 4)]  # fmt: skip
    suggest = tmp_path / "suggest.csv"
    suggest.write_text("rank,path,guess,confidence,margin\n" + "\n".join(lines) + "\n")
    return data, suggest, images


def rows(data: Path) -> list[dict]:
    with open(data / ".imgcls" / "corrections.csv", newline="") as f:
        return list(csv.DictReader(f))


def wait_for_thumbnail(page) -> None:
    page.wait_for_function("() => { const img = document.getElementById('thumb');"
                           " return img.complete && img.naturalWidth > 0; }")  # fmt: skip


def test_findings_are_grouped_worst_first_and_decisions_are_appended(server):
    s, data = server
    before = digests(data)
    state = httpx.get(s.url + "/api/items").json()
    kinds = [item["kind"] for item in state["items"]]
    ids = {item["id"]: item for item in state["items"]}
    first = state["items"][0]  # worst first: a planted cat filed as a dog, found
    assert first["kind"] == "label_issue" and first["id"].startswith("dogs/was-cat-")
    assert first["suggested"] == "cats" and first["label"] == "dogs"
    assert first["fix"] == (
        "relabel" if first["confidence"] >= RELABEL_MIN_PROBABILITY else "exclude"
    )
    assert ids["cats/fish-copy.png"]["kind"] == "conflicting_labels"
    assert kinds.index("conflicting_labels") < kinds.index("exact_duplicate")
    assert state["left"] == len(state["items"])
    body = {"index": first["index"], "action": "relabel", "label": "cats"}
    state = httpx.post(s.url + "/api/decide", json=body).json()
    assert state["left"] == len(state["items"]) - 1
    r = httpx.post(s.url + "/api/decide", json={"index": first["index"], "action": "paint"})
    assert r.status_code == 422 and "`action` must be one of" in r.json()["error"]
    body = {"index": first["index"], "action": "add", "label": "cats"}  # labeling mode's only
    r = httpx.post(s.url + "/api/decide", json=body)
    assert r.status_code == 422 and "Received: action='add'" in r.json()["error"]
    assert httpx.get(s.url + f"/api/thumb/{first['index']}").headers["content-type"] == "image/png"
    got = [(r["path"], r["action"], r["label"]) for r in rows(data)]
    assert got == [(first["id"], "relabel", "cats")]
    assert digests(data) == before


def test_export_writes_a_corrected_copy(server, tmp_path, capsys):
    s, data = server
    state = httpx.get(s.url + "/api/items").json()
    wrong = state["items"][0]["id"]  # the planted cat that was found
    ids = {item["id"]: item["index"] for item in state["items"]}
    httpx.post(s.url + "/api/decide", json={"index": ids[wrong], "action": "relabel",
                                            "label": "cats"})  # fmt: skip
    httpx.post(
        s.url + "/api/decide", json={"index": ids["cats/fish-copy.png"], "action": "exclude"}
    )
    out = tmp_path / "fixed"
    assert main(["review", str(data), "--export", str(out)]) == 0
    name = wrong.split("/")[1]
    assert (out / "cats" / name).is_file() and not (out / "dogs" / name).exists()
    assert not any(out.rglob("fish-copy.png"))
    assert (out / "dogs" / "004.png").is_file()  # undecided: as it was
    assert (out / "dogs" / "004.png").stat().st_ino == (data / "dogs" / "004.png").stat().st_ino
    assert main(["review", str(data), "--export", str(out)]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium: apt-get install -y chromium")
def test_the_keyboard_accepts_excludes_relabels_and_undoes(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    s, data = server
    before = digests(data)
    profile = tempfile.mkdtemp(prefix="imgcls-chromium-")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )  # fmt: skip
        page = browser.new_page()
        page.goto(s.url + "/")
        left = page.get_by_test_id("left")
        sync_api.expect(left).not_to_have_text("…")
        total = int(left.inner_text())
        first = page.get_by_test_id("path").inner_text()
        page.keyboard.press("a")  # accept the suggestion (a label issue comes first)
        sync_api.expect(left).to_have_text(str(total - 1))
        second = page.get_by_test_id("path").inner_text()
        # The README's picture: back on the first image, its label, the suggestion accepted and
        # the buttons. The file's temporary folder would change it on every run: shown as DATA's.
        page.keyboard.press("ArrowLeft")
        sync_api.expect(page.get_by_test_id("path")).to_have_text(first)
        wait_for_thumbnail(page)
        page.evaluate(
            "document.getElementById('file').textContent = 'DATA/.imgcls/corrections.csv'"
        )
        save_screenshot(page.locator("main").screenshot(), SCREENSHOT)
        page.keyboard.press("ArrowRight")
        sync_api.expect(page.get_by_test_id("path")).to_have_text(second)
        page.keyboard.press("x")  # exclude
        sync_api.expect(left).to_have_text(str(total - 2))
        third = page.get_by_test_id("path").inner_text()
        page.keyboard.press("3")  # the third class: fish
        sync_api.expect(left).to_have_text(str(total - 3))
        page.keyboard.press("ArrowLeft")  # back to the third image, and undo its decision
        page.keyboard.press("u")
        sync_api.expect(left).to_have_text(str(total - 2))
        browser.close()
    shutil.rmtree(profile, ignore_errors=True)
    got = [(r["path"], r["action"], r["label"]) for r in rows(data)]
    assert got[0][0] == first and got[0][1] == "relabel"
    assert got[1] == (second, "exclude", "")
    assert got[2] == (third, "relabel", "fish") and got[3] == (third, "undo", "")
    assert digests(data) == before


def test_labeling_mode_refuses_other_actions_and_bad_csvs(to_label, monkeypatch, capsys):
    data, suggest, images = to_label
    s = Server(data, "--label", str(suggest), command="review", ready="/api/items")
    try:
        state = httpx.get(s.url + "/api/items").json()
        assert state["mode"] == "label" and state["left"] == 4
        assert [item["id"] for item in state["items"]] == [str(p) for p in images]  # by rank
        first = state["items"][0]
        assert (first["index"], first["group"], first["label"]) == (1, "to label", None)
        assert (first["suggested"], first["confidence"]) == ("cats", 0.89)
        thumb = httpx.get(s.url + f"/api/thumb/{first['index']}")
        assert thumb.headers["content-type"] == "image/png"
        r = httpx.post(s.url + "/api/decide", json={"index": 1, "action": "exclude"})
        assert r.status_code == 422 and r.json()["error"] == (
            "`action` must be one of add, undo in labeling mode. Received: action='exclude'"
        )
        r = httpx.post(s.url + "/api/decide", json={"index": 1, "action": "add", "label": "birds"})
        assert r.status_code == 422 and "`label` must be one of the classes" in r.json()["error"]
    finally:
        s.stop()
    monkeypatch.setattr("imgcls.serve.run_app", lambda *a: pytest.fail("served a bad --label"))
    bad = suggest.with_name("bad.csv")
    cases = {
        "rank,path\n1,{p}\n2,{missing}\n": "bad.csv row 3: ",  # names the row
        "rank,file\n1,{p}\n": "must have a `path` column",
        "rank,path\n1,{p}\n2,{inside}\n": "row 3: {inside} is already in DATA",
    }
    for text, message in cases.items():
        where = {"p": images[0], "missing": images[0].with_name("nowhere.png"),
                 "inside": data.resolve() / "cats" / "002.png"}  # fmt: skip
        bad.write_text(text.format(**where))
        assert main(["review", str(data), "--label", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message.format(**where) in err[0], err
    assert main(["review", str(data), "--label", str(bad.with_name("none.csv"))]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (data / ".imgcls").exists()  # nothing written


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium: apt-get install -y chromium")
def test_the_keyboard_labels_suggested_images_into_the_data(to_label):
    from imgcls.data.hashing import sha256_file
    from imgcls.data.sources import load_source

    sync_api = pytest.importorskip("playwright.sync_api")
    data, suggest, images = to_label
    before = digests(data)
    s = Server(data, "--label", str(suggest), command="review", ready="/api/items")
    profile = tempfile.mkdtemp(prefix="imgcls-chromium-")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            page = browser.new_page()
            page.goto(s.url + "/")
            left, path = page.get_by_test_id("left"), page.get_by_test_id("path")
            guess = page.locator("#buttons button.primary")
            sync_api.expect(left).to_have_text("4")
            sync_api.expect(path).to_have_text(str(images[0]))  # rank 1 first
            sync_api.expect(guess).to_have_text("1: cats (a)")  # the guess, preselected
            page.keyboard.press("a")  # accept it: cats
            sync_api.expect(left).to_have_text("3")
            sync_api.expect(path).to_have_text(str(images[1]))
            page.keyboard.press("2")  # dogs
            sync_api.expect(left).to_have_text("2")
            page.keyboard.press("3")  # fish
            sync_api.expect(left).to_have_text("1")
            sync_api.expect(path).to_have_text(str(images[3]))
            sync_api.expect(guess).to_have_count(0)  # "birds" is no class of DATA
            page.keyboard.press("ArrowLeft")  # back to the fish, and undo it
            page.keyboard.press("u")
            sync_api.expect(left).to_have_text("2")
            page.keyboard.press("k")  # nothing in this mode
            page.keyboard.press("x")  # skip to the next unlabeled image, writing nothing
            sync_api.expect(path).to_have_text(str(images[3]))
            sync_api.expect(left).to_have_text("2")
            browser.close()
    finally:
        s.stop()
        shutil.rmtree(profile, ignore_errors=True)
    got = [(r["path"], r["digest"], r["action"], r["label"]) for r in rows(data)]
    added = [
        (str(p), sha256_file(str(p)), "add", c) for p, c in zip(images[:3], CLASSES, strict=True)
    ]
    assert got == [*added, (str(images[2]), "", "undo", "")]
    corrected, originals = load_source(data), load_source(data, corrections=False)
    labels = dict(zip(corrected.ids, corrected.labels, strict=True))
    assert [corrected.class_names[labels[str(p)]] for p in images[:2]] == ["cats", "dogs"]
    assert str(images[2]) not in labels and len(corrected) == len(originals) + 2
    assert digests(data) == before
