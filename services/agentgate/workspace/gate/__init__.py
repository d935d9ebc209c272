"""The verification gate: the plan, its checks by level, and the clean room they run in
(docs/verify-yaml.md)."""
