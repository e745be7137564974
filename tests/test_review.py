"""`imgcls review`: the real server over a generated folder with planted wrong labels and
duplicates, driven over HTTP and with the keyboard in headless Chromium; every decision lands in
the corrections file at once and no image is touched. `--export` writes a corrected copy."""

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
from tests.conftest import Server, write_folder  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")


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


def rows(data: Path) -> list[dict]:
    with open(data / ".imgcls" / "corrections.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_findings_are_grouped_worst_first_and_decisions_are_appended(server):
    s, data = server
    before = digests(data)
    state = httpx.get(s.url + "/api/items").json()
    kinds = [item["kind"] for item in state["items"]]
    ids = {item["id"]: item for item in state["items"]}
    first = state["items"][0]  # worst first: a planted cat filed as a dog, found
    assert first["kind"] == "label_issue" and first["id"].startswith("dogs/was-cat-")
    assert first["suggested"] == "cats" and first["label"] == "dogs"
    assert ids["cats/fish-copy.png"]["kind"] == "conflicting_labels"
    assert kinds.index("conflicting_labels") < kinds.index("exact_duplicate")
    assert state["left"] == len(state["items"])
    body = {"index": first["index"], "action": "relabel", "label": "cats"}
    state = httpx.post(s.url + "/api/decide", json=body).json()
    assert state["left"] == len(state["items"]) - 1
    r = httpx.post(s.url + "/api/decide", json={"index": first["index"], "action": "paint"})
    assert r.status_code == 422 and "`action` must be one of" in r.json()["error"]
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
            profile, executable_path=str(CHROMIUM), headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
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
