"""End to end in a real headless Chromium: the dashboard of a live run draws its curves,
and a click on "stop" stops the MST in the store.

Needs Debian's ``chromium`` (``apt-get install chromium``, or ``make browser``); Playwright
drives it through ``executable_path``, no browser download. Without it the test is
skipped, unless ``MODELHOPPER_TEST_REQUIRE_BROWSER=1`` (CI), where it fails.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper.server import create_app
from modelhopper.store import SQLStore

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("MODELHOPPER_TEST_CHROMIUM", "/usr/bin/chromium"))
HOW_TO_INSTALL = (
    f"no Chromium at {CHROMIUM}: install it with `sudo apt-get install chromium` (or `make "
    "browser`), or point MODELHOPPER_TEST_CHROMIUM at one"
)


def _require_browser() -> None:
    missing = None
    if not CHROMIUM.exists():
        missing = HOW_TO_INSTALL
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed: pip install -e '.[dev]'"
    if missing is None:
        return
    if os.environ.get("MODELHOPPER_TEST_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MODELHOPPER_TEST_REQUIRE_BROWSER=1 but {missing}")
    pytest.skip(missing)


def make_estimator(p):
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Linear(p["hidden"], 10)
    )
    return mh.Estimator(
        model=model, optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=16,
    )  # fmt: skip


class _Server:
    """uvicorn serving the app on a free port of 127.0.0.1, in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("the dashboard server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_run(tmp_path) -> Iterator[tuple[str, mh.RunHandle]]:
    """A random search on digits, training in the background while the test runs."""
    url = f"sqlite:///{tmp_path}/runs.db"
    space = {"hidden": mh.choice([16, 32, 64]), "lr": mh.loguniform(1e-3, 3e-2)}
    search = mh.RandomSearch(
        make_estimator, space, n_msts=4, epochs=200, metric="val_accuracy",
        direction="maximize", seed=0,
    )  # fmt: skip
    run = search.start(
        mh.datasets.digits(), n_workers=2, run_name="e2e", store=url, run_dir=tmp_path / "run"
    )
    try:
        yield url, run
    finally:
        for mst in run.status()["mst_id"]:  # end the run quickly: stop what still trains
            try:
                run.stop(int(mst), wait=False)
            except mh.ModelHopperError:
                pass  # already finished or stopped
        run.wait(timeout=120)


def _wait_until(condition, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _painted_pixels(page, selector: str, *, colored: bool = False) -> int:
    """Pixels drawn on a canvas; ``colored``: only saturated ones (curves and bars, not the
    grey axes and grid)."""
    return page.evaluate(
        """([selector, colored]) => {
            const canvas = document.querySelector(selector);
            if (!canvas || !canvas.width || !canvas.height) return 0;
            const ctx = canvas.getContext("2d");
            const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (d[i + 3] === 0) continue;
                const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
                const spread = Math.max(r, g, b) - Math.min(r, g, b);
                if (!colored || spread > 60) n++;
            }
            return n;
        }""",
        [selector, colored],
    )


def test_stop_an_mst_from_the_dashboard_of_a_live_run(live_run, tmp_path):
    _require_browser()
    from playwright.sync_api import sync_playwright

    url, run = live_run
    store = SQLStore(url)  # the dashboard's own connection, as from another process
    epochs_done = lambda: store.row_counts("e2e")["epochs"] if _exists(store) else 0  # noqa: E731
    _wait_until(lambda: epochs_done() >= 2, "the run's first epochs")
    with _Server(create_app(store, token="e2e-token")) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{base}/runs/e2e?token=e2e-token")
        page.wait_for_selector("body[data-loaded='1']", timeout=30_000)
        assert "token=" not in page.url  # taken out of the address bar, kept in the browser
        page.wait_for_function(
            "document.getElementById('curves-note').textContent.includes('epochs shown')"
        )
        # The curves: colored strokes, not only the grey axes and grid.
        assert _painted_pixels(page, "#curves canvas", colored=True) > 500
        assert _painted_pixels(page, "#timeline", colored=True) > 500
        stop = page.locator("button[data-action='stop']").first
        mst_id = int(stop.get_attribute("data-mst"))
        stop.click()
        page.wait_for_selector("#flash.good", timeout=10_000)
        status = lambda: next(m.status for m in store.list_msts("e2e") if m.mst_id == mst_id)  # noqa: E731
        _wait_until(lambda: status() == "stopped", f"MST {mst_id} to stop")
        page.wait_for_selector(f"tr[data-mst='{mst_id}'] .status.stopped", timeout=15_000)
        _clone_from_the_form(page, store)
        page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
        browser.close()
    stop_command, clone_command = store.list_commands("e2e")
    assert (stop_command.kind, stop_command.payload, stop_command.status.value) == (
        "stop", {"mst_id": mst_id}, "applied",
    )  # fmt: skip
    assert clone_command.payload["changes"] == {"lr": 0.005}
    assert errors == []
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    store.close()


def _clone_from_the_form(page, store: SQLStore) -> None:
    """Clone with an edited lr: a value outside the space is refused in the form first."""
    clone = page.locator("button[data-action='clone']").first
    parent = int(clone.get_attribute("data-mst"))
    clone.click()
    page.fill("#editor-fields [data-param='lr']", "5")
    page.click("#editor-ok")
    page.wait_for_function(
        "document.getElementById('editor-error').textContent.includes('outside')"
    )
    assert store.list_commands("e2e")[-1].kind == "stop"  # nothing queued
    page.fill("#editor-fields [data-param='lr']", "0.005")
    page.click("#editor-ok")
    page.wait_for_selector("#editor", state="hidden")
    clone_of = lambda: [m for m in store.list_msts("e2e") if m.parent == parent]  # noqa: E731
    (child,) = _wait_until(clone_of, f"a clone of MST {parent}")
    assert child.params["lr"] == 0.005 and child.warm_start


def _exists(store: SQLStore) -> bool:
    return any(r.name == "e2e" for r in store.list_experiments())


def test_report_renders_offline(store, tmp_path, make_two_objective_run):
    """The static report draws its curves and timeline with no server and no network."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    from modelhopper.server import write_report

    path = write_report(store, "fake", tmp_path / "report.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        errors: list[str] = []
        requests: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-loaded='1']", timeout=30_000)
        assert _painted_pixels(page, "#curves canvas", colored=True) > 500
        assert _painted_pixels(page, "#timeline", colored=True) > 500
        assert page.locator("#mst-body tr").count() == 6
        page.click("th[data-sort='mst_id']")  # sorting works on the embedded data too
        page.click("th[data-sort='mst_id']")  # again: descending
        page.wait_for_function("document.querySelector('#mst-body tr').dataset.mst === '5'")
        make_two_objective_run(store)  # a run on two objectives marks its Pareto front
        page.goto(write_report(store, "mo", tmp_path / "mo.html").as_uri())
        page.wait_for_selector("body[data-loaded='1']", timeout=30_000)
        marked = page.locator("#mst-body td[data-pareto='1']").all_text_contents()
        assert sorted(marked) == ["0 \u25c6", "3 \u25c6"]
        assert "on the Pareto front of val_accuracy (max), val_size (min)" in (
            page.locator("#table-note").text_content() or ""
        )
        browser.close()
    assert errors == [] and requests == [path.as_uri(), (tmp_path / "mo.html").as_uri()]
