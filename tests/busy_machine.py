"""What tests share so they hold on a busy machine: how slow this machine is right now, torch on one thread as
in every fedfleet process, and private user data.

A test whose wall-clock budget is about the network or real compute (a gRPC round must fit the devices' real
training into its deadline) does not hard-code that budget for an idle machine: it measures the machine at
its start and scales the budget by `MachineSpeed.slowdown`. Tests about deadlines themselves use injected or
simulated clocks instead.

The measurement times a batch of fixed work on as many threads as the tests keep busy (`THREADS`), in the
test's own process: SHA-256 of a buffer, which runs outside the GIL, so the threads compete for cores, not for
the interpreter. A single thread would miss load that matters: with the kernel's autogroup scheduling a
session gets a fair share of the whole machine, so one thread may find a core of its own while the test's
event loop and training threads share that one core. The batch's CPU cost on the reference machine (2 cores)
is `REFERENCE_SECONDS`; the wall time it takes now, over that, is the slowdown: about 1 when the machine is
idle, 3 and more beside `stress-ng --cpu 2`, more on a slower machine. It never goes below 1, so a faster
machine keeps the budgets the tests were written with, and it takes the upper quartile of the runs, so a
moment of quiet does not hide the load.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedfleet.runtime.threads import configure_torch_threads

#: Threads of the measurement: the cores a test may keep busy (the event loop, training threads, a subprocess).
THREADS = max(1, min(len(os.sched_getaffinity(0)), 4))
#: Wall seconds of one batch on an idle reference machine (the 2-core dev box: each thread's CPU time, which does
#: not grow with the load, was 0.0066-0.0068 s for the 8 MiB digest, and a batch adds the threads' hand-off).
REFERENCE_SECONDS = 0.007
_BLOCK = b"fedfleet" * (1 << 20)  # 8 MiB


def reference_work() -> float:
    """A fixed piece of CPU work that runs outside the GIL; returns the CPU seconds this thread spent on it."""
    started = time.thread_time()
    hashlib.sha256(_BLOCK).digest()
    return time.thread_time() - started


@dataclass(frozen=True)
class MachineSpeed:
    """How many times slower than the idle reference machine this one is at the moment it was measured."""

    slowdown: float
    samples: tuple[float, ...] = ()  # the wall seconds of each batch of the reference work

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
        batches = ", ".join(f"{s:.3f}" for s in self.samples)
        return f"slowdown {self.slowdown:.2f} (batches of the reference work on {THREADS} threads took {batches} s)"


#: For code that sets up a test but runs nothing against the clock.
IDLE_MACHINE = MachineSpeed(1.0)


def measure_speed(runs: int = 15) -> MachineSpeed:
    """Time `runs` batches of `reference_work` on `THREADS` threads (about 0.1 s idle); the upper quartile of
    their wall times over the reference is the slowdown."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    samples = []
    with ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="machine-speed") as pool:
        list(pool.map(lambda _: reference_work(), range(THREADS)))  # start the threads, warm the caches
        for _ in range(runs):
            started = time.perf_counter()
            list(pool.map(lambda _: reference_work(), range(THREADS)))
            samples.append(time.perf_counter() - started)
    upper = statistics.quantiles(samples, n=4)[2] if runs > 1 else samples[0]
    return MachineSpeed(max(1.0, upper / REFERENCE_SECONDS), tuple(samples))


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
