"""The page of ``imgcls serve`` in a real browser: headless Chromium drives ``GET /`` of a live
server, uploads images and reads the classes the page shows.

Needs Debian's Chromium (``apt-get install -y chromium``) and the ``playwright`` package
(``pip install playwright``); without either the tests are skipped. Never run
``playwright install``: the tests drive the system Chromium and download nothing.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import Server, save_screenshot

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"browser test needs Chromium at {CHROMIUM}: apt-get install -y chromium",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="browser test needs Playwright: pip install playwright "
    "(not `playwright install`; the test drives the system Chromium)",
)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RESULT_TIMEOUT_MS = 30_000  # first prediction may build the graph
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "serve_page.png"
VIEWPORT = {"width": 1000, "height": 700}


@pytest.fixture
def start_server(tmp_path):
    """``start_server(run, *args)`` -> base URL of ``imgcls serve RUN`` once it is ready; every
    server started is stopped at teardown."""
    servers = []

    def start(run: Path, *args: str) -> str:
        servers.append(Server(run, *args, log=tmp_path / f"serve-{len(servers)}.log"))
        return servers[-1].url

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium with a fresh profile folder, as a Playwright browser context."""
    profile = tempfile.mkdtemp(prefix="imgcls-chromium-")
    with sync_api.sync_playwright() as p:
        # A persistent context is how Playwright takes a user-data-dir; a fresh one per module.
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser):
    """A new tab; ``page.requests`` collects every URL it asks for."""
    page = browser.new_page()
    page.requests = []  # every URL the page asked for
    page.on("request", lambda request: page.requests.append(request.url))
    yield page
    page.close()


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """The session's trained run, copied to a folder whose name the page shows as the model's."""
    return Path(shutil.copytree(trained_run[0], tmp_path / "shapes"))


@pytest.fixture
def samples(trained_run, tmp_path) -> list[Path]:
    """Two images of each class, named so the cards read well."""
    _, data = trained_run
    (tmp_path / "upload").mkdir()
    out = []
    for i, source in enumerate(("007.png", "012.png"), start=1):
        for name in ("cats", "dogs", "fish"):
            out.append(
                Path(shutil.copy(data / name / source, tmp_path / "upload" / f"{name}-{i}.png"))
            )
    return out


def shown_result(page, path: Path) -> tuple[str, str]:
    """(top label, top probability text) of ``path``'s card, once it has them."""
    card = page.locator(f'[data-testid="result"][data-file="{path.name}"]')
    label = card.locator('[data-testid="top-label"]')
    label.wait_for(timeout=RESULT_TIMEOUT_MS)
    return label.inner_text(), card.locator('[data-testid="top-probability"]').inner_text()


def check_matches_python(page, run: Path, paths: list[Path]) -> None:
    import imgcls

    for path, expected in zip(paths, imgcls.load(run).predict(paths), strict=True):
        label, probability = shown_result(page, path)
        assert label == expected.label, path.name
        # The page shows one decimal of a percentage: "97.3%".
        assert probability.endswith("%"), probability
        assert abs(float(probability[:-1]) - 100 * expected.probability) <= 0.05 + 1e-4


def test_page_classifies_uploads_like_python(run, start_server, page, samples):
    base = start_server(run)
    page.goto(base + "/")
    header = page.locator("header")
    for name in ("cats", "dogs", "fish"):
        sync_api.expect(header).to_contain_text(name)
    sync_api.expect(header).to_contain_text(run.name)

    page.get_by_test_id("file-input").set_input_files([str(p) for p in samples])
    check_matches_python(page, run, samples)
    sync_api.expect(page.get_by_test_id("result")).to_have_count(len(samples))

    save_screenshot(page.screenshot(), SCREENSHOT)

    # A file the server cannot read gets its own error card; the others keep their results.
    broken = samples[0].with_name("notes.png")
    broken.write_text("not an image")
    page.get_by_test_id("file-input").set_input_files([str(broken)])
    card = page.locator('[data-testid="result"][data-file="notes.png"]')
    sync_api.expect(card.get_by_test_id("error")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    sync_api.expect(page.get_by_test_id("top-label")).to_have_count(len(samples))

    page.get_by_role("button", name="Clear").click()
    sync_api.expect(page.get_by_test_id("result")).to_have_count(0)

    # Offline: nothing but the server itself (and the page's own blob: thumbnails).
    foreign = [u for u in page.requests if not u.startswith((base + "/", "blob:", "data:"))]
    assert foreign == []


def test_page_asks_for_the_token(run, start_server, page, samples):
    base = start_server(run, "--token", "secret")
    page.goto(base + "/")
    token = page.get_by_test_id("token-input")
    sync_api.expect(token).to_be_visible()
    sync_api.expect(page.locator("body")).to_contain_text("needs an access token")

    token.fill("wrong")
    page.get_by_test_id("token-submit").click()
    sync_api.expect(page.locator("body")).to_contain_text("not accepted")

    token.fill("secret")
    page.get_by_test_id("token-submit").click()
    sync_api.expect(token).to_be_hidden()
    sync_api.expect(page.locator("header")).to_contain_text("fish")
    page.get_by_test_id("file-input").set_input_files(str(samples[2]))
    check_matches_python(page, run, [samples[2]])

    # The token lasts for the browser tab's session: a reload does not ask again.
    page.reload()
    sync_api.expect(page.locator("header")).to_contain_text("fish")
    sync_api.expect(token).to_be_hidden()
