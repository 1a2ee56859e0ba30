"""The FederatedJob resource as typed models: its spec and status (pydantic), reading a manifest with
one-line errors that name the field and the rule, and the CRD generated from the spec.

Floor: the bottom one, beside models/, persist/ and data/, which it never imports; every floor above reads
the spec. pydantic and PyYAML only.
"""
