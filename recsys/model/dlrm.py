"""Kept for imports written before the model registry: DLRM is `ClickModel` with model=dlrm.

The DLRM head itself is `recsys.model.head.DLRMHead`; models are built by
`recsys.model.click.build_model`.
"""

from recsys.model.click import ClickModel as DLRM
from recsys.model.click import build_model

__all__ = ["DLRM", "build_model"]
