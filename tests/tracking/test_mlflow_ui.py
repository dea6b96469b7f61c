"""The real `mlflow ui` (the server `make ui` starts) over a run trained by the real recipe:
its REST API lists the run, and headless Chromium, driven by Playwright, renders what a person
opens: the runs table with the run's unique name and eval AUC, the run page with the dataset
inputs and the registered model version, and the run's plots in the artifact browser.

Screenshots of each page go to `outputs/test-artifacts/ui/` (taken even when a check fails).
Needs /usr/bin/chromium (`apt-get install -y chromium`) and Playwright (`pip install
playwright`, in the dev extra; it drives the system Chromium, no browser download).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from recsys.compose import load_config
from recsys.tracking.urls import experiment_url, run_url
from recsys.train.recipe import run
from tests.processes import free_port, stop_group
from tests.synthetic import write_tiny_log

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow

MODEL = "ui-tiny"  # tracking.register_as
CHROMIUM = Path("/usr/bin/chromium")
# The network is closed: without these Chromium waits on connections it can never make.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
VIEWPORT = {"width": 1920, "height": 1080}
PAGE_TIMEOUT_MS = 60_000  # the UI's first load parses a few MB of JS: slow on 2 busy cores
STARTUP_DEADLINE_S = 120.0
SCREENSHOTS = Path(__file__).resolve().parents[2] / "outputs" / "test-artifacts" / "ui"
EVAL_AUC_COLUMN = "metrics.`eval/auc`"  # ag-grid's column id for the eval/auc metric

# Checked at collection, so a machine without a browser skips before training anything.
needs_browser = pytest.mark.skipif(
    not CHROMIUM.exists() or importlib.util.find_spec("playwright") is None,
    reason=f"needs {CHROMIUM} (apt-get install -y chromium) and Playwright (pip install playwright)",
)


@dataclass(frozen=True)
class Served:
    """A finished, registered run and the UI that serves its store."""

    base_url: str
    experiment_id: str
    run_id: str
    run_name: str
    eval_auc: float
    digests: dict[str, str]  # dataset context ("train", "eval") -> digest
    model_version: str
    plots: list[str]  # file names under the run's plots/


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll `url` until it answers 200; fail with the server log when it dies or times out."""
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    pytest.fail(
        f"mlflow ui did not answer {url} in {STARTUP_DEADLINE_S}s:\n{log.read_text()[-3000:]}"
    )


def _train(root: Path, uri: str) -> Served:
    """One epoch of the real recipe on a tiny log, tracked to `uri` and registered as MODEL;
    what the UI should show, read back from the store (base_url left empty)."""
    from mlflow import MlflowClient

    overrides = [
        *write_tiny_log(root).overrides,
        f"tracking.uri={uri}",
        "tracking.experiment=ui",
        f"tracking.register_as={MODEL}",
        "trainer.epochs=1",
    ]
    result = run(load_config(overrides, output_dir=str(root / "run")))
    client = MlflowClient(tracking_uri=uri)
    tracked = client.get_run(result.run_id)
    (version,) = client.search_model_versions(f"name='{MODEL}'")
    return Served(
        base_url="",
        experiment_id=tracked.info.experiment_id,
        run_id=result.run_id,
        run_name=tracked.info.run_name,
        eval_auc=result.metrics["eval/auc"],
        digests={
            tag.value: d.dataset.digest
            for d in tracked.inputs.dataset_inputs
            for tag in d.tags
            if tag.key == "mlflow.data.context"
        },
        model_version=str(version.version),
        plots=[Path(a.path).name for a in client.list_artifacts(result.run_id, "plots")],
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A SQLite store holding one trained, registered run, served as `make ui` serves
    ./mlruns (`mlflow ui`, one worker, no job runner) on a free port."""
    root = tmp_path_factory.mktemp("mlflow_ui")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    trained = _train(root, uri)
    port = free_port()
    cmd = [
        str(Path(sys.executable).with_name("mlflow")), "ui",
        "--backend-store-uri", uri,
        "--default-artifact-root", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner workers
    log = root / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_until_up(f"{base_url}/health", proc, log)
        yield replace(trained, base_url=base_url)
    finally:
        stop_group(proc, grace_s=15)


@pytest.fixture
def page(served: Served, tmp_path: Path) -> Iterator[Page]:
    """A page of a fresh headless Chromium profile (no saved UI state) that may reach the
    served UI and nothing else."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            tmp_path / "chromium",
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        try:
            context.set_default_timeout(PAGE_TIMEOUT_MS)
            context.route(lambda url: not url.startswith(served.base_url), lambda r: r.abort())
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


@contextlib.contextmanager
def _screenshot_after(page: Page, name: str) -> Iterator[None]:
    """Save `<SCREENSHOTS>/<name>.png` once the block ends, whether its checks passed or not."""
    try:
        yield
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def _close_assistant(page: Page) -> None:
    """Close MLflow's assistant side panel (open by default): it hides a third of the page."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.click()


def _dataset(page: Page, name: str, digest: str) -> str:
    """The context shown beside the dataset input `name` with `digest` (once on the page)."""
    item = page.get_by_role("button").filter(has_text=f"{name} ({digest})").last
    shown_name, shown_digest, context = item.inner_text().split()
    assert (shown_name, shown_digest) == (name, f"({digest})")
    return context


def test_rest_api_lists_the_run(served: Served) -> None:
    body = json.dumps({"experiment_ids": [served.experiment_id]}).encode()
    req = urllib.request.Request(
        f"{served.base_url}/api/2.0/mlflow/runs/search",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        runs = json.load(resp)["runs"]
    assert [(r["info"]["run_id"], r["info"]["run_name"]) for r in runs] == [
        (served.run_id, served.run_name)
    ]


@needs_browser
def test_runs_table_shows_the_run_its_datasets_and_eval_auc(served: Served, page: Page) -> None:
    with _screenshot_after(page, "experiment"):
        page.goto(experiment_url(served.base_url, served.experiment_id))
        name = page.get_by_role("link", name=served.run_name, exact=True)
        name.wait_for()
        assert name.get_attribute("href", timeout=0).endswith(f"/runs/{served.run_id}")
        _close_assistant(page)
        datasets = page.locator('[role="gridcell"][col-id="attributes.`Dataset`"]').inner_text()
        for context, digest in served.digests.items():
            assert f"movielens-{context} ({digest})\n{context.capitalize()}" in datasets, datasets
        # The link recsys prints names its view (an experiment tag): eval AUC is a column
        # from the start, and the Models column names the registered version.
        auc = page.locator(f'[role="gridcell"][col-id="{EVAL_AUC_COLUMN}"]')
        assert float(auc.inner_text()) == pytest.approx(served.eval_auc, abs=1e-9)
        assert page.get_by_role("columnheader", name="eval/auc").count() >= 1
        models = page.locator('[role="gridcell"][col-id="attributes.`Models`"]').inner_text()
        assert f"{MODEL} v{served.model_version}" in " ".join(models.split()), models


@needs_browser
def test_run_page_shows_the_datasets_and_the_registered_version(served: Served, page: Page) -> None:
    with _screenshot_after(page, "run"):
        page.goto(run_url(served.base_url, served.experiment_id, served.run_id))
        page.get_by_text("About this run").wait_for()
        _close_assistant(page)
        page.get_by_text(served.run_name, exact=True).first.wait_for()
        version = page.locator(f'a[href$="/models/{MODEL}/versions/{served.model_version}"]')
        assert version.first.inner_text().split() == [MODEL, f"v{served.model_version}"]
        # The Datasets box shows the first input and hides the other two (validation: the
        # held-out slice; eval) behind "+2".
        assert _dataset(page, "movielens-train", served.digests["train"]) == "Train"
        page.get_by_text("+2", exact=True).click()
        assert _dataset(page, "movielens-eval", served.digests["eval"]) == "Eval"
        validation = _dataset(page, "movielens-validation", served.digests["validation"])
        assert validation == "Validation"


@needs_browser
def test_artifacts_tab_shows_the_plots(served: Served, page: Page) -> None:
    assert "roc.png" in served.plots, f"the run logged no ROC plot: {served.plots}"
    with _screenshot_after(page, "artifacts"):
        page.goto(run_url(served.base_url, served.experiment_id, served.run_id))
        page.get_by_text("About this run").wait_for()
        _close_assistant(page)
        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_text("plots", exact=True).click()
        for name in served.plots:  # each waits until listed (the folder is fetched on click)
            page.get_by_text(name, exact=True).wait_for()
        page.get_by_text("roc.png", exact=True).click()
        page.get_by_text("plots/roc.png", exact=True).wait_for()
        image = page.locator("img").first
        image.wait_for()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )
