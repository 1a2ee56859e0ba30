"""The FederatedJob resource as typed models: its spec and status (pydantic), its cross-field rules written
once for both the models and the CRD's CEL (rules), reading a manifest as the API server does (strict_yaml,
manifest) with one-line errors that name the field and the rule, and the CRD generated from the spec. Also
the typed contracts of process boundaries: the aggregator's configuration and the pod environment.

Floor: the bottom one, with models/, persist/ and data/; every floor above reads
the spec. pydantic and PyYAML only.
"""
