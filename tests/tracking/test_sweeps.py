"""`recsys.tracking.sweeps`: which trial of a sweep is best (validation only, never eval)."""

from __future__ import annotations

from recsys.tracking.sweeps import Trial, TrialOutcome, select_best, swept_params


def _trial(number: int, **metrics: float) -> Trial:
    return Trial(f"run{number}", f"t{number}", number, {"trainer.lr": str(number)}, metrics)


def test_best_is_picked_on_validation_auc_never_on_eval() -> None:
    trials = [
        _trial(0, **{"valid/auc": 0.70, "eval/auc": 0.90}),
        _trial(1, **{"valid/auc": 0.72, "eval/auc": 0.60}),
    ]
    best, skipped = select_best(trials)
    assert best is trials[1] and skipped == {}


def test_a_trial_without_validation_metrics_is_skipped_and_named() -> None:
    # Trial 1 validated on eval rows (holdout off): its eval/auc must not make it the best.
    trials = [_trial(0, **{"valid/auc": 0.70}), _trial(1, **{"eval/auc": 0.99})]
    best, skipped = select_best(trials)
    assert best is trials[0]
    assert set(skipped) == {"t1"} and "no valid/auc" in skipped["t1"]


def test_no_best_when_no_trial_has_validation_metrics() -> None:
    best, skipped = select_best([_trial(0, **{"eval/auc": 0.8}), _trial(1, **{"eval/auc": 0.9})])
    assert best is None and set(skipped) == {"t0", "t1"}


def test_under_optuna_only_completed_trials_can_be_best() -> None:
    trials = [_trial(n, **{"valid/auc": v}) for n, v in enumerate([0.70, 0.75, 0.72])]
    outcomes = {
        "run0": TrialOutcome(0, "COMPLETE", 0.70, baseline=True),
        "run1": TrialOutcome(1, "PRUNED", 0.75),  # stopped early: its config would not give it
        "run2": TrialOutcome(2, "COMPLETE", 0.72),
    }
    best, skipped = select_best(trials, outcomes)
    assert best is trials[2] and skipped == {"t1": "pruned (Optuna)"}


def test_swept_params_leave_out_what_differs_between_any_trials() -> None:
    a = Trial("a", "a", 0, {"trainer.lr": "0.1", "output_dir": "m/0", "seed": "0"}, {})
    b = Trial("b", "b", 1, {"trainer.lr": "0.2", "output_dir": "m/1", "seed": "0"}, {})
    assert swept_params([a, b]) == ["trainer.lr"]
