"""What tests share so they hold on a busy machine: how slow this machine is right now, torch on one thread as
in every fedfleet process, and private user data.

A test whose wall-clock budget is about the network or real compute (a gRPC round must fit the devices' real
training into its deadline) does not hard-code that budget for an idle machine: it measures the machine at
its start and scales the budget by `MachineSpeed.slowdown`. Tests about deadlines themselves use injected or
simulated clocks instead.

The measurement times a fixed piece of single-threaded work (interpreter loop, hashing, numpy) that stands for
what the event loop and the devices do. Its CPU cost on the reference machine (2 cores) is
`REFERENCE_SECONDS`; the wall time it takes now, over that, is the slowdown: about 1 when the machine is idle,
2 to 3 beside `stress-ng --cpu 2`, more on a slower machine. It never goes below 1, so a faster machine keeps
the budgets the tests were written with.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedfleet.runtime.threads import configure_torch_threads

#: CPU seconds `reference_work` takes on the reference machine (the 2-core dev box: `time.thread_time()`,
#: which does not grow with the load, measured 0.0108-0.0114 s while it was busy).
REFERENCE_SECONDS = 0.011
_BLOCK = b"fedfleet" * (1 << 18)  # 2 MiB
_NUMBERS = np.arange(200_000, dtype=np.float64)


def reference_work() -> int:
    """A fixed amount of CPU work of the kinds a test's processes do: Python bytecode, hashing, numpy."""
    x = 0
    for i in range(100_000):
        x = (x * 31 + i) % 1_000_003
    x ^= hashlib.sha256(_BLOCK).digest()[0]
    return x + int((_NUMBERS * 1.5 + 2.0).sum()) % 7


@dataclass(frozen=True)
class MachineSpeed:
    """How many times slower than the idle reference machine this one is at the moment it was measured."""

    slowdown: float
    samples: tuple[float, ...] = ()  # the wall seconds of each run of the reference work

    def __post_init__(self) -> None:
        if self.slowdown < 1.0:
            raise ValueError(f"slowdown must be at least 1, got {self.slowdown}")

    def seconds(self, idle_seconds: float) -> float:
        """A wall-clock budget written for the idle reference machine, stretched to this machine now."""
        return idle_seconds * self.slowdown

    def time_scale(self, idle_time_scale: float) -> float:
        """A simulation's wall seconds per simulated second, stretched so its deadlines keep their real room."""
        return idle_time_scale * self.slowdown

    def __str__(self) -> str:
        return f"slowdown {self.slowdown:.2f} (reference work took {', '.join(f'{s:.3f}' for s in self.samples)} s)"


#: For code that sets up a test but runs nothing against the clock.
IDLE_MACHINE = MachineSpeed(1.0)


def measure_speed(runs: int = 9) -> MachineSpeed:
    """Time `reference_work` `runs` times (about 0.1 s idle) and take the median against the reference."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    reference_work()  # warm up: the first run pays for allocation and caches
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        reference_work()
        samples.append(time.perf_counter() - started)
    return MachineSpeed(max(1.0, statistics.median(samples) / REFERENCE_SECONDS), tuple(samples))


@pytest.fixture
def machine_speed() -> MachineSpeed:
    """This machine's speed, measured when the test starts (the load changes over a run of the suite)."""
    return measure_speed()


@pytest.fixture(scope="session", autouse=True)
def torch_threads() -> int:
    """Torch in the test process runs on the threads the `fedfleet` commands give it (one by default, or
    FEDFLEET_TORCH_THREADS), whichever test happens to run first. With torch's default of one thread per core,
    its OpenMP workers spin against every other busy thread: beside `stress-ng --cpu 2` the in-process
    runtime of the secure-aggregation test took 50-107 s instead of 5-7 s."""
    return configure_torch_threads()


@pytest.fixture(autouse=True)
def private_user_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test gets its own user data directory: nothing a test runs (the `fedfleet` command included, which
    inherits the environment) reads or writes the machine's privacy ledger under ~/.local/share, and tests
    running in parallel never share one."""
    home = tmp_path_factory.mktemp("user-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(home))
        patch.setenv("FEDFLEET_LEDGER", str(home / "fedfleet" / "privacy-ledger.db"))
        yield home
