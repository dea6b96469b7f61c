"""model=dcn, mf, fm and lr end to end on the tiny log: learn, export, score like training did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.compose import load_config
from recsys.export.manifest import ExportError, Manifest
from recsys.export.scorer import Scorer
from recsys.train.recipe import TrainResult, run
from tests.synthetic import write_tiny_log

BLOCK_TORCHREC = "import sys; sys.modules['torchrec'] = None; sys.modules['fbgemm_gpu'] = None; "
USER_COLUMNS = [
    "user_id",
    "gender",
    "age_bucket",
    "occupation",
    "zip_prefix",
    "age",
    "user_prior_like_rate",
]
ITEM_COLUMNS = ["item_id", "genres", "release_year", "item_prior_like_rate"]
MODELS = {
    # Unequal dims (genres 8, the rest 16) and a low-rank, parallel cross network.
    "dcn": ["data.tables.genres.embedding_dim=8", "model.low_rank=8", "model.structure=parallel"],
    "mf": [],
    # The baselines, one with the embedding regularizer on.
    "fm": ["trainer.embedding_l2=1e-4"],
    "lr": [],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[TrainResult, Path]]:
    root = tmp_path_factory.mktemp("models")
    log = write_tiny_log(root)
    results = {}
    for name, extra in MODELS.items():
        overrides = [*log.overrides, "tracking=none", f"model={name}", *extra]
        results[name] = run(load_config(overrides, output_dir=str(root / name))), log.eval
    return results


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_learns_and_export_scores_like_training(trained, name: str) -> None:
    result, eval_path = trained[name]
    # Chance is 0.5; dlrm gets ~0.68, the logistic regression ~0.60 (the log has interactions).
    floor = 0.57 if name == "lr" else 0.62
    assert result.metrics["eval/auc"] > floor, result.metrics
    manifest = Manifest.load(result.export_dir)
    assert manifest.dense["architecture"] == name
    scores = Scorer(result.export_dir).score(pq.read_table(eval_path))
    expected = pq.read_table(result.predictions_path)["prob"].to_numpy()
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)


def test_dcn_export_keeps_per_table_dims(trained) -> None:
    result, _ = trained["dcn"]
    manifest = Manifest.load(result.export_dir)
    assert manifest.tables["genres"]["dim"] == 8 and manifest.tables["item_id"]["dim"] == 16
    assert manifest.dense["head_config"]["low_rank"] == 8


def test_mf_towers_from_separate_records_give_the_trained_scores(trained) -> None:
    """User vectors from user columns alone, item vectors from item columns alone:
    sigmoid(<u, v> + user bias + item bias) is the trained model's prediction."""
    result, eval_path = trained["mf"]
    records = pq.read_table(eval_path)
    scorer = Scorer(result.export_dir)
    users, user_bias = scorer.user_vectors(records.select(USER_COLUMNS))
    items, item_bias = scorer.item_vectors(records.select(ITEM_COLUMNS))
    assert users.shape == items.shape == (records.num_rows, 16)
    logits = (users.astype(np.float64) * items).sum(1) + user_bias + item_bias
    expected = pq.read_table(result.predictions_path)["prob"].to_numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), expected, rtol=0, atol=1e-5)


def test_score_cli_writes_item_vectors_without_torchrec(trained, tmp_path: Path) -> None:
    result, eval_path = trained["mf"]
    items = tmp_path / "items.parquet"
    pq.write_table(pq.read_table(eval_path).select(ITEM_COLUMNS), items)
    out = tmp_path / "item_vectors.parquet"
    code = BLOCK_TORCHREC + "from recsys.cli.score import main; sys.exit(main(sys.argv[1:]))"
    args = [str(result.export_dir), str(items), str(out), "--tower", "item", "--batch-rows", "300"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    written = pq.read_table(out)
    expected, bias = Scorer(result.export_dir).item_vectors(pq.read_table(items))
    np.testing.assert_allclose(np.stack(written["vector"].to_numpy(zero_copy_only=False)), expected)
    np.testing.assert_allclose(written["bias"].to_numpy(), bias)


def test_towers_of_a_non_two_tower_export_are_refused(trained) -> None:
    result, eval_path = trained["dcn"]
    with pytest.raises(ExportError, match="model=mf"):
        Scorer(result.export_dir).user_vectors(pq.read_table(eval_path))
