"""What the machine can do and what one trained sample asks of it, so a rate is also a fraction.

    .venv/bin/python -m recsys.bench.limits

Two limits, measured (best of a few repeats, on this process's torch threads):

* dense fp32 matmul FLOP/s: `torch.mm` of two n x n matrices, 2 n^3 FLOPs each;
* memory bandwidth: a tensor far larger than the caches copied (bytes read + written) and
  summed (bytes read).

Two costs per trained sample, counted from the model's shapes (README, "Benchmarks"):

* FLOPs: 3 x the forward FLOPs of the dense part (dense arch, pairwise dot products, over arch);
  backward is about twice the forward (a gradient for the input and one for the weights).
* embedding bytes: every id reads its row in the forward and reads and writes it again in the
  fused optimizer's update, which also reads and writes the row's optimizer state (one float
  for row-wise Adagrad): ids x (3 x dim + 2) x 4 bytes, plus the same for the bias tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

FLOAT_BYTES = 4


@dataclass(frozen=True)
class MachineLimits:
    matmul_flops_per_s: float  # dense fp32 torch.mm
    copy_bytes_per_s: float  # a large tensor copy: bytes read + written per second
    sum_bytes_per_s: float  # a large tensor sum: bytes read per second
    threads: int  # torch intra-op threads the limits were measured with
    matmul_n: int
    copy_mib: int

    @property
    def bandwidth_bytes_per_s(self) -> float:
        """The memory limit rates are compared with: the faster of copy and sum."""
        return max(self.copy_bytes_per_s, self.sum_bytes_per_s)

    def to_dict(self) -> dict:
        return {**asdict(self), "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s}


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first touch of the pages, kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def machine_limits(matmul_n: int = 2048, copy_mib: int = 512, repeats: int = 5) -> MachineLimits:
    """Measure dense matmul FLOP/s and memory bandwidth (best of `repeats`)."""
    copy_bytes, sum_bytes = _bandwidth(copy_mib, repeats)
    return MachineLimits(
        matmul_flops_per_s=_matmul_flops(matmul_n, repeats),
        copy_bytes_per_s=copy_bytes,
        sum_bytes_per_s=sum_bytes,
        threads=torch.get_num_threads(),
        matmul_n=matmul_n,
        copy_mib=copy_mib,
    )


def _matmul_flops(n: int, repeats: int) -> float:
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    return 2 * n**3 / _best_seconds(lambda: torch.mm(a, b, out=out), repeats)


def _bandwidth(mib: int, repeats: int) -> tuple[float, float]:
    """(copy: bytes read + written per second, sum: bytes read per second)."""
    src = torch.ones(mib * 2**20 // FLOAT_BYTES)
    dst = torch.empty_like(src)
    nbytes = src.numel() * FLOAT_BYTES
    copy = _best_seconds(lambda: dst.copy_(src), repeats)
    total = _best_seconds(lambda: src.sum(), repeats)
    return 2 * nbytes / copy, nbytes / total


def _mlp_flops(sizes: Sequence[int]) -> int:
    """Forward FLOPs of a chain of Linear layers (a multiply and an add per weight)."""
    return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


@dataclass(frozen=True)
class SampleCost:
    """What one trained sample of a DLRM-shaped model costs."""

    forward_flops: int
    flops: int  # forward + backward, 3 x forward
    embedding_bytes: int  # rows read + written, optimizer state included
    ids: int  # ids looked up per sample (all features)

    def to_dict(self) -> dict:
        return asdict(self)


def dlrm_sample_cost(
    num_dense: int,
    dense_arch: Sequence[int],
    num_sparse: int,
    dim: int,
    over_arch: Sequence[int],
    ids_per_sample: float,
    bias_width: int = 0,
    state_floats: int = 1,
) -> SampleCost:
    """FLOPs and embedding bytes of one trained sample (formulas in the module docstring).

    `over_arch` without its final 1 (added here); `bias_width` > 0 counts a bias table per
    feature of that width (recsys' first-order terms); `state_floats` per row: 1 for row-wise
    Adagrad, `dim` for plain Adagrad.
    """
    vectors = num_sparse + int(num_dense > 0)
    dense = _mlp_flops([num_dense, *dense_arch, dim]) if num_dense else 0
    gram = 2 * vectors * vectors * dim  # bmm of [N, D] x [D, N] per sample
    interactions = vectors * (vectors - 1) // 2 + (dim if num_dense else 0)
    over = _mlp_flops([interactions, *over_arch, 1])
    forward = dense + gram + over
    per_id = (3 * dim + 2 * state_floats) * FLOAT_BYTES
    if bias_width:
        per_id += (3 * bias_width + 2 * state_floats) * FLOAT_BYTES
    return SampleCost(forward, 3 * forward, round(ids_per_sample * per_id), round(ids_per_sample))


def fractions(samples_per_s: float, cost: SampleCost, limits: MachineLimits) -> dict[str, float]:
    """A rate as a share of the machine's limits: compute used / matmul FLOP/s, embedding
    bytes moved / memory bandwidth."""
    return {
        "flops_fraction": samples_per_s * cost.flops / limits.matmul_flops_per_s,
        "bandwidth_fraction": samples_per_s * cost.embedding_bytes / limits.bandwidth_bytes_per_s,
    }


def main() -> None:
    limits = machine_limits()
    print(
        f"matmul {limits.matmul_flops_per_s / 1e9:,.1f} GFLOP/s (fp32, n={limits.matmul_n}, "
        f"{limits.threads} threads)\ncopy {limits.copy_bytes_per_s / 1e9:,.2f} GB/s, "
        f"sum {limits.sum_bytes_per_s / 1e9:,.2f} GB/s ({limits.copy_mib} MiB)"
    )


if __name__ == "__main__":
    main()
