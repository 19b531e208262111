"""The app served on a local port: its API through gradio_client, and the page in headless Chromium."""

import json
import socket
import zipfile
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from commerge_ui.demo import DEMO_CONFIG, ensure_demo  # noqa: E402
from commerge_ui.ui import build_app, launch  # noqa: E402
from commerge_ui.ui.handlers import DEFAULT_METHODS, MAX_EXPERTS, defaults_from  # noqa: E402
from commerge_ui.ui.session import Sessions  # noqa: E402

from conftest import make_base  # noqa: E402
from tiny_families import make_clip_setup, make_lm_setup  # noqa: E402

SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-output"
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(config_path: Path, root: Path):
    app = build_app(config_path, Sessions(root))
    port = free_port()
    launch(app, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return app, f"http://127.0.0.1:{port}/"


def run_args(config_path: Path, methods: list[str], samples: int, max_length: int, **replace) -> list:
    """The /run endpoint's inputs, in the page's order, as the form shows them for `config_path`."""
    d = defaults_from(config_path)
    rows = [(e.name, e.model, e.calibration, e.evaluation, e.labels) for e in d.experts]
    rows += [("", None, None, None, "")] * (MAX_EXPERTS - len(rows))
    for index, row in replace.get("experts", {}).items():
        rows[index] = row
    files = [lambda p: handle_file(p) if p else None][0]
    return [d.base, len(d.experts), *(r[0] for r in rows), *(r[1] for r in rows),
            *(files(r[2]) for r in rows), *(files(r[3]) for r in rows), *(r[4] for r in rows),
            methods, 0.9, 0.3, samples, max_length, 0, "cpu", "float32"]


def outputs_by_name(outputs: tuple) -> dict:
    names = ["progress", "status", "report", "shown", "heat_method", "shift", "heldout", "heatmap", "scores", "bars",
             "costs",
             "warnings", "export_method", "report_file", "config_file", "compare_runs"]
    return dict(zip(names, outputs))


def last_layer_shift(method: dict) -> float:
    return sum(s[-1] for s in method["shift"].values()) / len(method["shift"])


@pytest.fixture(scope="module")
def tiny_app(tiny_deep, tmp_path_factory):
    config = tiny_deep.write_config("app.yaml")
    app, url = serve(config, tmp_path_factory.mktemp("sessions"))
    yield config, Client(url, verbose=False)
    app.close()


def test_api_runs_a_merge_and_returns_plots_and_report(tiny_app):
    config, client = tiny_app
    out = outputs_by_name(client.predict(*run_args(config, ["com", "regmean"], 24, 16), api_name="/run"))
    assert out["status"].startswith("✔ done · best average accuracy")
    report = json.loads(Path(out["report_file"]).read_text())
    assert report == out["report"]
    assert last_layer_shift(report["methods"]["com"]) < last_layer_shift(report["methods"]["regmean"])
    assert out["shift"]["type"] == "plotly" and len(json.loads(out["shift"]["plot"])["data"]) == 2
    assert [t["name"] for t in json.loads(out["heldout"]["plot"])["data"]] == [
        f"{m} · {kind}" for m in ("Chain of Merges", "RegMean") for kind in ("calibration", "held-out")]
    assert out["scores"]["headers"][0] == "model" and [r[0] for r in out["scores"]["data"]] == [
        "base", "experts", "Chain of Merges", "RegMean"]
    assert "experts:" in Path(out["config_file"]).read_text()


def test_run_config_endpoint_takes_a_bundle_and_refuses_other_files(tiny_app, tmp_path):
    from commerge_ui.api import run_merge
    from commerge_ui.config import load_config
    from commerge_ui.export import write_config_bundle

    config_path, client = tiny_app
    config = load_config(config_path).model_copy(update={"methods": ["com", "average"]})
    write_config_bundle(config, tmp_path / "bundle")
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in (tmp_path / "bundle").rglob("*"):
            bundle.write(path, path.relative_to(tmp_path / "bundle").as_posix())
    status, report = client.predict(handle_file(str(archive)), "cpu", "float32", api_name="/run_config")
    assert status.startswith("✔ done · best average accuracy"), status
    assert report["methods"]["com"]["scores"] == run_merge(config, device="cpu").methods["com"].scores
    (tmp_path / "notes.txt").write_text("hello")
    status, report = client.predict(handle_file(str(tmp_path / "notes.txt")), "cpu", "float32",
                                    api_name="/run_config")
    assert status == "✘ notes.txt: expected a config.yaml or a config bundle (.zip)" and report is None


def test_api_reports_a_mismatched_expert_without_crashing(tiny_app, tmp_path):
    config, client = tiny_app
    make_base(tmp_path / "wide", hidden=48)
    d = defaults_from(config)
    e = d.experts[1]
    args = run_args(config, ["com"], 24, 16, experts={1: (e.name, str(tmp_path / "wide"), e.calibration, e.evaluation, "")})
    out = outputs_by_name(client.predict(*args, api_name="/run"))
    # refused before any weight is read, in the words of the form's note beside the model
    assert out["status"].startswith("✘ fix what the form marks ✘ first: expert 2 (task1): ") and (
        "does not match the base: hidden size 48, the base has 32" in out["status"])
    assert out["progress"] == ""  # nothing started
    assert client.predict(api_name="/cancel") == "Nothing is running."


def test_two_sessions_merge_one_at_a_time_in_separate_folders(tiny_app, monkeypatch):
    """The queue holds one merge per process (one GPU): two users' runs never overlap, and each gets its own."""
    import threading
    import time

    import commerge_ui.api as api

    config, client = tiny_app
    spans, real = [], api.run_merge
    lock = threading.Lock()

    def recorded(*args, **kwargs):
        began = time.monotonic()
        time.sleep(1.0)  # long enough that two runs admitted together would overlap
        report = real(*args, **kwargs)
        with lock:
            spans.append((began, time.monotonic(), str(kwargs["out_dir"])))
        return report

    monkeypatch.setattr(api, "run_merge", recorded)
    url = client.src
    jobs = [Client(url, verbose=False).submit(*run_args(config, ["regmean"], 24, 16), api_name="/run")
            for _ in range(2)]
    outs = [outputs_by_name(job.result(timeout=300)) for job in jobs]
    assert [o["status"].split(" · ")[0] for o in outs] == ["✔ done", "✔ done"]
    (a_start, a_end, a_dir), (b_start, b_end, b_dir) = sorted(spans)
    assert a_end <= b_start, "two merges ran at the same time"
    assert Path(a_dir).parent != Path(b_dir).parent  # separate session folders


@pytest.mark.parametrize("family", ["image-classification", "causal-lm"])
def test_the_app_merges_clip_and_causal_lm_experts_too(family, tmp_path):
    setup = (make_clip_setup(tmp_path, layout="zip") if family == "image-classification"
             else make_lm_setup(tmp_path, "llama", layers=3, noise=0.5))
    config = setup.write_config("app.yaml", methods=["com", "regmean"])
    app, url = serve(config, tmp_path / "sessions")
    try:
        args = run_args(config, ["com", "regmean"], 12, 16)
        if family == "image-classification":
            args[2 + 4 * MAX_EXPERTS] = "red, green, blue"  # expert 1's class names, in the order given
        client = Client(url, verbose=False)
        out = outputs_by_name(client.predict(*args, api_name="/run"))
        model_zip = client.predict("com", api_name="/zip_model")[0] if out["status"].startswith("✔ done") else None
    finally:
        app.close()
    assert out["status"].startswith("✔ done"), out["status"]
    report = out["report"]
    assert report["family"] == family and set(report["methods"]) == {"com", "regmean"}
    assert last_layer_shift(report["methods"]["com"]) < last_layer_shift(report["methods"]["regmean"])
    assert all(v is not None for v in report["methods"]["com"]["scores"].values())
    if family == "image-classification":
        with zipfile.ZipFile(model_zip) as archive:
            assert json.loads(archive.read("heads/task0/classes.json"))["classes"] == ["red", "green", "blue"]


@pytest.fixture(scope="module")
def demo_app(tmp_path_factory):
    ensure_demo()
    app, url = serve(DEMO_CONFIG, tmp_path_factory.mktemp("demo-sessions"))
    yield url
    app.close()


@pytest.mark.slow
def test_demo_through_the_api(demo_app):
    out = outputs_by_name(Client(demo_app, verbose=False).predict(*run_args(DEMO_CONFIG, ["com", "regmean"], 64, 48),
                                                                  api_name="/run"))
    report = out["report"]
    com, regmean = report["methods"]["com"], report["methods"]["regmean"]
    # Real text: the experts sit at 59-92 % (80 % on average) and CoM keeps most of it; its drift is ~5× lower.
    assert com["average_score"] >= 0.70 and regmean["average_score"] >= 0.70
    assert last_layer_shift(com) < last_layer_shift(regmean)
    assert json.loads(out["heatmap"]["plot"])["data"][0]["type"] == "heatmap"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), as .ci/run does")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.mark.slow
def test_demo_in_the_browser(demo_app, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(demo_app)
    page.wait_for_selector("#run")
    box = page.locator("#run").bounding_box()
    assert box is not None and box["y"] + box["height"] <= 1000  # Run is on the first screen
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "demo_first_screen.png"))
    open_inputs(page)
    assert "matches the base" in page.inner_text("#expert-3-status")
    for baseline in ("CoM, chain only", "Task arithmetic", "Average"):  # ticked by default; unticked: CI's time
        box = page.get_by_label(baseline, exact=True)
        assert box.is_checked()
        box.uncheck()
    page.click("#run")
    page.wait_for_selector("#run:disabled", timeout=120_000)  # no second run while one goes
    # the experts' and the base's scoring is shown: running ("scoring 3/12"), or done ("scored in 0.1 s") when
    # an earlier run in this process left their scores in the cache
    page.wait_for_function("(document.querySelector('#progress [data-method=references]') || {innerText: ''})"
                           ".innerText.includes('scor')", timeout=300_000)
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "demo_running.png"))
    page.wait_for_selector("#shift-plot .js-plotly-plot .scatterlayer .trace", timeout=900_000)
    page.wait_for_selector("#run:enabled", timeout=30_000)
    page.wait_for_timeout(1500)  # the page scrolls the verdict into view when the run ends
    verdict = page.locator("#run-status").bounding_box()
    assert verdict is not None and 0 <= verdict["y"] < 1000 - 40, verdict
    assert page.locator("#cancel").is_disabled()  # nothing runs: Cancel is not live
    page.screenshot(path=str(SCREENSHOTS / "demo_results.png"), full_page=True)
    assert page.locator("#shift-plot .scatterlayer .trace").count() == 2  # CoM and RegMean, mean over tasks
    assert "How to read this" in page.inner_text("#how-to-read")
    assert page.locator("#heldout-plot .scatterlayer .trace").count() == 4  # calibration and held-out, per method
    assert "held-out shift (last block)" in page.inner_text("#run-status")
    page.locator("#heldout-plot").screenshot(path=str(SCREENSHOTS / "demo_heldout.png"))
    page.locator("#run-status").scroll_into_view_if_needed()  # README's picture (assets/app_results.png)
    page.evaluate("window.scrollBy(0, -60)")
    page.screenshot(path=str(SCREENSHOTS / "readme_results.png"))
    assert "last-layer shift: Chain of Merges" in page.inner_text("#run-status")
    assert "★ best" in page.inner_text("#scores")
    assert page.locator("#heatmap .heatmaplayer, #heatmap .hm, #heatmap image").count() >= 1
    table = page.inner_text("#scores")
    for row in ("base", "experts", "Chain of Merges", "RegMean"):
        assert row in table
    assert "✔ done" in page.inner_text("#run-status")
    page.close()


@pytest.mark.slow
def test_two_runs_are_compared_in_the_browser(tiny_deep, browser, tmp_path):
    app, url = serve(tiny_deep.write_config("compare.yaml"), tmp_path / "sessions")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#run")
        assert "each task's score" in page.inner_text("#scores")  # named headers before the first run
        for run, alpha in ((1, "0.9"), (2, "0.5")):
            box = page.locator("#alpha input[type=number]")
            box.fill(alpha)
            box.press("Enter")
            page.click("#run")
            page.wait_for_function(f"document.querySelectorAll('#compare-runs label').length === {run}",
                                   timeout=300_000)
            page.wait_for_selector("#run:enabled", timeout=60_000)
        traces = 2 * len(DEFAULT_METHODS)  # 2 runs × the default methods
        page.wait_for_function(f"document.querySelectorAll('#compare-plot .scatterlayer .trace').length === {traces}",
                               timeout=60_000)
        legend = page.inner_text("#compare-plot")
        assert "run 1 · Chain of Merges" in legend and "run 2 · Chain of Merges" in legend
        table = page.inner_text("#compare-table")
        assert "run 1: α 0.9" in table and "run 2: α 0.5" in table
        SCREENSHOTS.mkdir(exist_ok=True)
        page.locator("#compare-plot").screenshot(path=str(SCREENSHOTS / "compare_runs.png"))
        page.close()
    finally:
        app.close()


def open_inputs(page) -> None:
    """Open the 'Models and samples' accordion (closed on arrival, so that Run is on the first screen)."""
    page.locator("#inputs").get_by_text("Models and samples", exact=False).first.click()
    page.wait_for_selector("#expert-1-model input", state="visible", timeout=30_000)


def upload(page, component: str, path: Path) -> None:
    """Replace the file a File component holds: clear it, then give its (hidden) file input the new file."""
    page.locator(f"{component} button[aria-label=Clear]").click()
    page.locator(f"{component} input[type=file]").set_input_files(str(path))


@pytest.mark.slow
def test_bad_input_in_the_browser_is_shown_next_to_its_cause(demo_app, browser, tmp_path):
    make_base(tmp_path / "wide", hidden=48)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    broken = tmp_path / "broken.csv"
    broken.write_text("text,label\nfine,1\n\"unterminated,0\n")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(demo_app)
    page.wait_for_selector("#run")
    open_inputs(page)
    model_box = page.locator("#expert-1-model input")
    model_box.fill(str(tmp_path / "wide"))
    model_box.press("Enter")
    page.wait_for_function("document.querySelector('#expert-1-status').innerText.includes('does not match')")
    assert "does not match the base: hidden size 48, the base has 384" in page.inner_text("#expert-1-status")
    upload(page, "#expert-0-calibration", empty)
    page.wait_for_function("document.querySelector('#samples-0-status').innerText.includes('no samples')")
    upload(page, "#expert-2-evaluation", broken)
    page.wait_for_function("document.querySelector('#samples-2-status').innerText.includes('broken.csv')")
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "bad_input.png"), full_page=True)
    assert "✘" in page.inner_text("#samples-2-status")
    assert "✘" not in page.inner_text("#expert-0-status")  # each message sits next to its own cause
    # Run names every problem at once, each by its expert and its own file, no server path
    page.click("#run")
    page.wait_for_function("document.querySelector('#run-status').innerText.includes('fix what the form marks')")
    status = page.inner_text("#run-status")
    assert "expert 2 (movies): " in status and "hidden size 48" in status
    assert "expert 1 (tweets), calibration samples: empty.txt: no samples" in status
    assert "expert 3 (amazon), evaluation samples: broken.csv:3: malformed CSV" in status
    assert str(tmp_path) not in status and "/tmp/" not in status.replace(str(tmp_path / "wide"), "")
    page.close()


@pytest.mark.slow
def test_cancel_in_the_browser_keeps_the_finished_method(demo_app, browser):
    """Run CoM and Average on the demo; Cancel once CoM is done and Average's merge has begun: CoM's results stay,
    shown as a partial run, and Average's row says nothing of it was kept."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(demo_app)
    page.wait_for_selector("#run")
    for method in ("RegMean", "CoM, chain only", "Task arithmetic"):
        page.get_by_label(method, exact=True).uncheck()
    assert page.locator("#cancel").is_disabled()
    page.click("#run")
    page.wait_for_function("(document.querySelector('#progress [data-method=average]') || {innerText: ''})"
                           ".innerText.includes('merging')", timeout=600_000)
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#run-status').innerText.includes('partial run')",
                           timeout=300_000)
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "cancelled_partial.png"))
    status = page.inner_text("#run-status")
    assert "cancelled: a partial run; what finished is kept (Chain of Merges)" in status
    assert "cancelled: nothing of it was kept" in page.inner_text("#progress [data-method=average]")
    assert page.locator("#shift-plot .scatterlayer .trace").count() == 1  # CoM's curve
    assert "(cancelled: partial)" in page.inner_text("#compare-runs")
    page.close()


def test_the_page_opens_on_the_precomputed_default_run(browser, tmp_path):
    from conftest import make_setup
    from commerge_ui.ui import handlers

    setup = make_setup(tmp_path / "own", n_experts=2)
    config = setup.write_config("page.yaml", options={"calibration_samples": 16, "max_length": 16, "seed": 0})
    report = handlers.precompute_default_run(config, log=lambda m: None)
    app, url = serve(config, tmp_path / "sessions")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_function("(document.querySelector('#run-status') || {innerText: ''}).innerText"
                               ".includes('precomputed')",
                               timeout=60_000)
        page.wait_for_selector("#shift-plot .js-plotly-plot .scatterlayer .trace", timeout=30_000)
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "arrival.png"), full_page=True)
        assert page.locator("#shift-plot .scatterlayer .trace").count() == len(report["methods"])
        assert "Run recomputes" in page.inner_text("#run-status") and "★ best" in page.inner_text("#scores")
        page.close()
    finally:
        app.close()
