"""How long an aggregator whose job is over keeps telling devices DONE before it exits.

Every device must learn that the job ended, from whichever aggregator process answers it: the one that ran
the last round, or one restarted on the finished run after a crash. A device may legitimately be silent for
as long as a task's deadline — one that dropped out of a round, or is still training as a surplus invitee,
comes back only then — so the farewell lasts that long (in wall seconds) plus `linger_seconds` for it to
ask, and ends earlier only when nobody can still be waiting:

- every device of the planned fleet has been told; or
- this process ran every round of the job, so every device that took part checked in with it, and every
  device that checked in has been told.

A process that started on a checkpoint cannot know who took part — its registry of devices died with the
process before it — so unless the whole fleet has been told it waits the window out.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedfleet.api.federatedjob import FederatedJobSpec


@dataclass(frozen=True)
class Farewell:
    window_seconds: float  # the longest farewell, in wall seconds from the moment the job is known to be over
    fleet_size: int  # devices the job's fleet is planned to have
    saw_every_device: bool  # this process ran every round: whoever took part checked in with it

    def __post_init__(self) -> None:
        if not (self.window_seconds >= 0 and self.fleet_size >= 1):
            raise ValueError(
                f"a farewell needs window_seconds >= 0 and fleet_size >= 1, got {self.window_seconds} and "
                f"{self.fleet_size}"
            )

    @classmethod
    def for_job(
        cls,
        spec: FederatedJobSpec,
        *,
        time_scale: float,
        linger_seconds: float,
        fleet_size: int,
        saw_every_device: bool,
    ) -> Farewell:
        longest_silence = spec.cohort.round_deadline_seconds * time_scale  # a task's deadline, in wall seconds
        return cls(linger_seconds + longest_silence, fleet_size, saw_every_device)

    def over(self, *, elapsed: float, told: int, every_known_device_told: bool) -> bool:
        """Whether to stop answering: `elapsed` wall seconds into the farewell, `told` devices told DONE by
        this process, and whether every device that checked in with it is among them."""
        if elapsed >= self.window_seconds or told >= self.fleet_size:
            return True
        return self.saw_every_device and every_known_device_told
