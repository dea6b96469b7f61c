"""recsys: large-scale click-model training.

Data flows one way: files -> data (stream, hash) -> model (TorchRec embedding bags + dense
arch) -> train (sharded, fused optimizers) -> tracking (MLflow) -> export (serving tables).
"""

__version__ = "0.1.0"
