from __future__ import annotations

import numpy as np

from fedfleet.engine.cohort import invitations, select_cohort


def test_over_selection_invites_more_than_the_target_but_never_more_than_available() -> None:
    assert invitations(10, 1.3, 100) == 13
    assert invitations(10, 1.0, 100) == 10
    assert invitations(10, 1.3, 7) == 7
    assert invitations(10, 1.3, 0) == 0


def test_cohort_is_a_sample_of_the_available_devices_independent_of_their_order() -> None:
    devices = [f"dev-{i:03d}" for i in range(50)]
    a = select_cohort(devices, 10, 1.2, np.random.default_rng(3))
    b = select_cohort(list(reversed(devices)), 10, 1.2, np.random.default_rng(3))
    assert a == b
    assert len(a) == 12 and len(set(a)) == 12
    assert set(a) <= set(devices)


def test_cohort_selection_is_roughly_uniform() -> None:
    devices = [f"d{i}" for i in range(20)]
    counts = dict.fromkeys(devices, 0)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        for d in select_cohort(devices, 5, 1.0, rng):
            counts[d] += 1
    expected = 2000 * 5 / 20
    assert all(abs(c - expected) < 0.15 * expected for c in counts.values())
