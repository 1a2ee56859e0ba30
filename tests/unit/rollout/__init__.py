"""Tests of fedfleet.rollout. A package, so its test modules may share basenames with others (test_cohort.py)."""
