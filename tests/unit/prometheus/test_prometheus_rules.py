"""The alerting and recording rules shipped in charts/fedfleet/files/rules.yaml, judged by Prometheus' own
promtool: they parse and lint clean, and they fire (or stay quiet) exactly as rules_test.yaml says."""

from __future__ import annotations

from pathlib import Path

import yaml

from prometheus_tools import RULES, promtool

HERE = Path(__file__).resolve().parent
RULE_TESTS = HERE / "rules_test.yaml"


def _rule_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule.get("alert") or rule["record"] for group in groups for rule in group["rules"]}


def test_rules_parse_and_lint_clean() -> None:
    done = promtool("check", "rules", "--lint=all", "--lint-fatal", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_rules_behave_as_their_unit_tests_say() -> None:
    done = promtool("test", "rules", RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_every_rule_has_a_unit_test() -> None:
    tests = RULE_TESTS.read_text()
    untested = {name for name in _rule_names() if name not in tests}
    assert not untested, f"rules without a case in {RULE_TESTS.name}: {sorted(untested)}"


def test_the_unit_tests_notice_a_changed_threshold(tmp_path: Path) -> None:
    # The cases pin the thresholds: the same cases against a rule that waits for 95% instead of 90% must fail,
    # and name the alert that changed.
    rules = RULES.read_text()
    assert "job:fedfleet_privacy_budget_spent:ratio >= 0.9 < 1" in rules
    (tmp_path / "rules.yaml").write_text(rules.replace(">= 0.9 < 1", ">= 0.95 < 1"))
    cases = yaml.safe_load(RULE_TESTS.read_text())
    cases["rule_files"] = ["rules.yaml"]
    (tmp_path / "rules_test.yaml").write_text(yaml.safe_dump(cases, sort_keys=False))
    done = promtool("test", "rules", tmp_path / "rules_test.yaml", cwd=tmp_path)
    assert done.returncode != 0, done.stdout
    assert "FedfleetPrivacyBudgetNearlyExhausted" in done.stdout + done.stderr
