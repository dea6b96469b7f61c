"""A run stops everything it started: no thread and no process group outlives `run()`.

Threads left running at interpreter exit abort the process: gloo's workers, still releasing a
finished collective's tensors, want the GIL, get pthread_exit inside a noexcept destructor,
and std::terminate ends the run ("terminate called without an active exception").

Each test runs its cases in a fresh interpreter, because what leaks depends on import order and
interpreter-wide state (torch imports the modules that bind `dist.group.WORLD` lazily, once
per process; tqdm starts its monitor thread with the first bar of the process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.synthetic import TinyLog

REPO = Path(__file__).resolve().parents[2]
GLOO_THREADS = ("pt_gloo_runloop", "gloo_tcp_loop")  # gloo's workers and transport loop

# This process's native threads by name, once gloo's are gone or after 2 s: a freed group's
# transport loop can take a moment to exit (seen once, a clean-clone CI run on 2 loaded cores); a
# thread the run leaks is still there after 2 s.
_NATIVE_THREADS = f"""
import os, time
def native_threads(settle_s=2.0):
    deadline = time.monotonic() + settle_s
    while True:
        names = []
        for t in os.listdir("/proc/self/task"):
            try:
                names.append(open(f"/proc/self/task/{{t}}/comm").read().strip())
            except OSError:  # the thread ended between the listing and the read
                pass
        if time.monotonic() > deadline or not set(names) & set({GLOO_THREADS!r}):
            return names
        time.sleep(0.05)
"""

# Runs each case's config in turn; after each, what is left: other Python threads, gloo's
# native threads, whether a process group is still initialized. A case with "interrupt" set
# gets Ctrl-C on its third step (in that stepper class) and keeps the exception (and so its
# traceback's frames) alive while it looks.
_SCRIPT = (
    _NATIVE_THREADS
    + """
import json, os, sys, threading
import torch.distributed as dist
from recsys.compose import load_config
from recsys.train import steppers
from recsys.train.recipe import run

def interrupting(step):
    calls = [0]
    def interrupted(self, batches):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return step(self, batches)
    return interrupted

def leftovers():
    native = native_threads()
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    return {"python": others, "native": native, "initialized": dist.is_initialized()}

report, held = {}, []
for case in json.loads(sys.argv[1]):
    cfg = load_config(case["overrides"], output_dir=case["output_dir"])
    if case["interrupt"] is None:
        run(cfg)
        report[case["name"]] = leftovers()
        continue
    stepper = getattr(steppers, case["interrupt"])
    step, stepper.step = stepper.step, interrupting(stepper.step)
    try:
        run(cfg)
    except KeyboardInterrupt as interrupt:
        held.append(interrupt)
        report[case["name"]] = leftovers()
    finally:
        stepper.step = step
print("REPORT " + json.dumps(report))
"""
)

_COMMON = [
    "tracking=none",
    "export.enabled=false",
    "trainer.progress_bar=true",  # tqdm's monitor thread would start with the bar
    "trainer.epochs=1",
]


def _leftovers(cases: list[dict], tmp_path: Path) -> dict[str, dict]:
    for case in cases:
        case["output_dir"] = str(tmp_path / case["name"])
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(cases)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))
    report = json.loads(line.removeprefix("REPORT "))
    assert set(report) == {c["name"] for c in cases}, proc.stderr[-3000:]
    assert "process group outlived the run" not in proc.stderr, proc.stderr[-3000:]
    return report


def _assert_nothing_left(report: dict[str, dict]) -> None:
    for case, left in report.items():
        assert left["python"] == [], (case, left)  # no read-ahead thread, no tqdm monitor
        assert not [t for t in left["native"] if t in GLOO_THREADS], (case, left)
        assert not left["initialized"], case


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="lists native threads through /proc"
)


# The group's lifecycle alone: joined, an optimizer built (torch then imports torch._dynamo,
# and with it the modules that bind `dist.group.WORLD` at import), an object collective run.
_GROUP_SCRIPT = (
    _NATIVE_THREADS
    + """
import json, os
import torch, torch.distributed as dist
from recsys.distributed.env import init_distributed, shutdown_distributed
init_distributed("cpu")
torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
dist.all_gather_object([None], {"rows": 1})
freed = shutdown_distributed()
print("REPORT " + json.dumps({"freed": freed, "native": native_threads()}))
"""
)


@needs_proc
def test_shutdown_frees_the_process_group_and_joins_its_threads() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _GROUP_SCRIPT], cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))
    report = json.loads(line.removeprefix("REPORT "))
    assert not [t for t in report["native"] if t in GLOO_THREADS], report
    assert report["freed"] is True


@needs_proc
def test_finished_runs_leave_no_thread_and_no_process_group(
    tiny_log: TinyLog, tmp_path: Path
) -> None:
    common = tiny_log.overrides + _COMMON
    cases = [
        {"name": "no_step", "overrides": common + ["trainer.max_steps=0"], "interrupt": None},
        # Stopped mid-epoch: the loader's read-ahead is abandoned with batches still queued.
        {"name": "max_steps", "overrides": common + ["trainer.max_steps=3"], "interrupt": None},
    ]
    _assert_nothing_left(_leftovers(cases, tmp_path))


@needs_proc
def test_interrupted_runs_leave_no_thread_and_no_process_group(
    tiny_log: TinyLog, tmp_path: Path
) -> None:
    common = tiny_log.overrides + _COMMON + ["trainer.max_steps=10"]
    cases = [
        {
            "name": f"interrupted_{stepper}",
            "overrides": common + [f"trainer.pipeline={stepper == 'PipelinedStepper'}"],
            "interrupt": stepper,
        }
        for stepper in ("PipelinedStepper", "PlainStepper")
    ]
    _assert_nothing_left(_leftovers(cases, tmp_path))
