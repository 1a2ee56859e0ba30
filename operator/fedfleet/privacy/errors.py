"""The refusals that end a job for privacy reasons, in one place for the runtimes to catch."""

from __future__ import annotations

from fedfleet.privacy.dp.accountant import PrivacyBudgetExceeded
from fedfleet.privacy.job import DevicesExhausted

#: Raised by FederatedServer.start_round before it changes anything: the job must stop, not fail.
PRIVACY_STOPS: tuple[type[Exception], ...] = (PrivacyBudgetExceeded, DevicesExhausted)
