"""A progress bar per round, showing the latest accuracy and participation."""

from __future__ import annotations

import sys

from tqdm import tqdm

from fedfleet.engine.records import RoundRecord


class RoundProgress:
    def __init__(self, total: int, done: int = 0, enabled: bool = True) -> None:
        self._bar = tqdm(
            total=total, initial=done, unit="round", disable=not enabled, file=sys.stderr, dynamic_ncols=True
        )

    def update(self, record: RoundRecord) -> None:
        postfix = {"devices": f"{record.participants}/{record.invited}"}
        if record.accuracy is not None:
            postfix["acc"] = f"{100 * record.accuracy:.1f}%"
        if record.dropped or record.late:
            postfix["lost"] = str(record.dropped + record.late)
        if not record.succeeded:
            postfix["round"] = "failed"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
