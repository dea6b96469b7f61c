"""`make tune`: Optuna over a search space on validation AUC, pruning, and a reusable best config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from recsys.cli.best_config import write_best_config
from recsys.cli.overrides import check_overrides
from recsys.compose import conf_dir, load_config
from recsys.config import register_configs
from recsys.tracking.sweeps import OBJECTIVE
from tests.synthetic import write_tiny_log


def _tune_config() -> dict:
    register_configs()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", ["+tune=default"], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.sweeper)


def test_the_default_search_space_names_real_keys_and_the_sweeper_maximizes() -> None:
    sweeper = _tune_config()
    assert sweeper["_target_"] == "hydra_plugins.recsys_tune.tune_sweeper.RecsysTuneSweeper"
    assert sweeper["direction"] == "maximize" and sweeper["n_trials"] == 20
    assert sweeper["sampler"]["_target_"] == "optuna.samplers.TPESampler"
    assert sweeper["pruner"]["_target_"] == "optuna.pruners.PercentilePruner"
    space = sweeper["params"]
    assert {"trainer.lr", "trainer.sparse_lr", "model.embedding_dim", "model.dropout"} <= set(space)
    assert {"trainer.weight_decay", "trainer.embedding_l2", "trainer.batch_size"} <= set(space)
    for key in space:
        assert check_overrides([f"{key}=1"]) is None, key


def test_trials_are_candidates_without_export_or_registered_model() -> None:
    cfg = load_config(["+tune=default"])
    assert not cfg.export.enabled and cfg.tracking.register_as is None


def _fake_trial(tmp_path: Path, overrides: list[str], ran: DictConfig) -> Path:
    """A trial folder as Hydra leaves it: overrides, chosen group options, the config it ran."""
    saved = tmp_path / "sweep" / "3" / ".hydra"
    saved.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), saved / "overrides.yaml")
    choices = {"data": "movielens", "model": "dcn", "trainer": "cpu", "tune": "default"}
    sources = [{"path": conf_dir(), "schema": "file", "provider": "main"}]
    runtime = {"choices": {**choices, "hydra/sweeper": "tune"}, "config_sources": sources}
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": runtime}}), saved / "hydra.yaml")
    OmegaConf.save(ran, saved / "config.yaml")
    return saved.parent


def test_best_config_is_an_experiment_that_composes_to_the_trials_config(tmp_path: Path) -> None:
    trial = [
        "trainer.lr=0.0031",
        "model=dcn",
        "model.embedding_dim=32",
        "+tune=default",
        "data.tables.user_id.num_buckets=512",
        "model.over_arch=[16,8]",
    ]
    without_tune = [o for o in trial if not o.startswith("+tune")]
    expected = load_config(without_tune)
    # The trial ran when the config files said seed 7: best.yaml keeps what it ran with.
    expected.trainer.seed = 7
    ran = OmegaConf.structured(expected)
    sweep_dir = tmp_path / "sweep"
    best = write_best_config(_fake_trial(tmp_path, trial, ran), sweep_dir, "Best trial 3")
    assert best.path == sweep_dir / "experiment" / "best.yaml"
    text = best.path.read_text()
    assert text.startswith("# @package _global_\n# Best trial 3\n") and "tune" not in text
    assert "  seed: 7\n" in text and "features:" not in text  # only what differs is pinned
    assert best.command() == f"make train ARGS='--config-dir {sweep_dir} +experiment=best'"

    again = load_config(["+experiment=best"], config_dir=str(sweep_dir))
    assert again == expected
    assert again.model.name == "dcn" and again.model.over_arch == [16, 8]
    assert again.trainer.lr == 0.0031 and again.data.tables["user_id"].num_buckets == 512
    assert again.export.enabled  # trained again, it is a normal run


def _tune(tiny_log, tmp_path: Path, uri: str) -> subprocess.CompletedProcess:
    # The tiny log's own sparse_lr is searched here, from 1e-3 to 1e3. Trial 0 is the defaults
    # (baseline), trial 1 a sane config, trial 2 a terrible one (both enqueued), which the
    # median pruner (2 completed trials before it) must stop at its first validation.
    args = [
        "--multirun",
        "+tune=default",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.pruner.n_startup_trials=2",
        "trainer.sparse_lr=tag(log,interval(1e-3,1e3))",
        "trainer.lr=tag(log,interval(1e-4,10))",
        "hydra.sweeper.enqueue=[{trainer.sparse_lr:0.05},{trainer.sparse_lr:1000.0,trainer.lr:10.0}]",
        f"tracking.uri={uri}",
        "tracking.experiment=tune",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        *[o for o in tiny_log.overrides if not o.startswith("trainer.sparse_lr=")],
        "trainer.first_order_stage=true",  # the default, off in the tiny log's overrides
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "recsys.cli.train", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.mark.slow
def test_tune_prunes_a_bad_trial_and_its_best_config_trains_the_same_model(
    tmp_path: Path,
) -> None:
    # Ids only: with the history features' like rates even the wrecked trial ranks rows
    # half-decently at its first validation, and is pruned at its second.
    tiny_log = write_tiny_log(tmp_path, history=False)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    proc = _tune(tiny_log, tmp_path, uri)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = tmp_path / "multirun"
    results = OmegaConf.to_container(OmegaConf.load(sweep_dir / "optimization_results.yaml"))
    states = [t["state"] for t in results["trials"]]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"], results["trials"]
    assert results["trials"][0]["baseline"] and results["trials"][2]["pruned_at_validation"] == 1

    # MLflow: one parent, a child per trial, each tagged with how Optuna ended it.
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tune").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {int(r.data.tags["tune.trial"]): r for r in runs if r is not parent}
    assert sorted(children) == [0, 1, 2]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children.values())
    assert children[2].data.tags["tune.state"] == "PRUNED"
    assert "pruned by Optuna" in children[2].data.tags["stop_reason"]
    for number, child in children.items():  # what Optuna was told is what the run logged
        value = results["trials"][number]["value"]
        assert child.data.metrics[OBJECTIVE] == pytest.approx(value, abs=1e-9)

    # The best trial: the best validation AUC among completed trials, as Optuna also says.
    best = max((children[0], children[1]), key=lambda r: r.data.metrics[OBJECTIVE])
    assert int(best.data.tags["tune.trial"]) == results["best_trial"]
    tags = parent.data.tags
    assert tags["sweep.best_run_id"] == best.info.run_id and tags["sweep.objective"] == OBJECTIVE
    assert best.info.run_id in tags["sweep.best_run_url"]
    assert float(tags["sweep.baseline_value"]) == pytest.approx(
        children[0].data.metrics[OBJECTIVE], abs=1e-6
    )
    for metric in (OBJECTIVE, "eval/auc"):
        assert parent.data.metrics[metric] == best.data.metrics[metric]
    assert parent.data.params["trainer.lr"] == best.data.params["trainer.lr"]
    assert "best.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    deletions = [o for o in tiny_log.overrides if o.startswith("~")]
    assert deletions  # best.yaml cannot remove a key: the printed command carries them
    assert f"--config-dir {sweep_dir} +experiment=best {' '.join(deletions)}'" in proc.stdout

    # Trained again from best.yaml, the best trial's config gives the same model.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    again = subprocess.run(
        [sys.executable, "-m", "recsys.cli.train", "--config-dir", str(sweep_dir),
         "+experiment=best", *deletions, "tracking.experiment=again", "tracking.register_as=null",
         f"hydra.run.dir={tmp_path / 'again'}"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    (rerun,) = client.search_runs([client.get_experiment_by_name("again").experiment_id])
    for metric in (OBJECTIVE, "eval/auc"):
        assert rerun.data.metrics[metric] == pytest.approx(best.data.metrics[metric], abs=1e-6)
    for key in ("trainer.lr", "trainer.sparse_lr", "model.embedding_dim", "data.train_path"):
        assert rerun.data.params[key] == best.data.params[key]
