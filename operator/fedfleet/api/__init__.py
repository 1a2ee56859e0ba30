"""The FederatedJob and ModelRollout resources as typed models: their specs and statuses (pydantic), their
cross-field rules written once for both the models and the CRDs' CEL (rules, rollout_rules), reading a manifest
as the API server does (strict_yaml, manifest) with one-line errors that name the field and the rule, and the
CRDs generated from the models (crd). Also the typed contracts of process boundaries: the aggregator's
configuration and the pod environment.

Floor: the bottom one, with models/, persist/ and data/; every floor above reads
the spec. pydantic and PyYAML only.
"""
