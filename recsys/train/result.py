"""What a training run returns: its final metrics, where its outputs are, and how it went."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainResult:
    """What a run produced (complete on rank 0; other ranks get metrics only)."""

    metrics: dict[str, float]
    output_dir: Path
    run_id: str | None = None
    export_dir: Path | None = None
    predictions_path: Path | None = None
    steps: int = 0
    samples: int = 0  # real rows trained by this run (after a resume: since it)
    samples_per_second: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    tracking: str = ""
    stop_reason: str | None = None  # set when early stopping ended training
    started_from: str | None = None  # the weights step 0 had: a resume, warm start or stage

    def summary(self) -> str:
        """The few lines a person wants at the end of a run (also the MLflow description)."""
        m = self.metrics
        nan = float("nan")
        lines = [
            "",
            "== recsys run finished ==",
            f"  eval AUC {m.get('eval/auc', nan):.4f} | log loss {m.get('eval/log_loss', nan):.4f} "
            f"| NE {m.get('eval/ne', nan):.4f} | calibration {m.get('eval/calibration', nan):.3f}",
            f"  steps {self.steps} | {self.samples_per_second:,.0f} samples/s",
            f"  outputs  {self.output_dir}",
            f"  export   {self.export_dir or '(export disabled)'}",
            f"  tracking {self.tracking}",
        ]
        if self.stop_reason:
            lines.insert(4, f"  stopped  {self.stop_reason}")
        if self.started_from:
            lines.insert(4, f"  start    {self.started_from}")
        if self.run_id:
            lines.append("  `make ui` serves the local store; the link above opens this run in it")
        return "\n".join(lines)
