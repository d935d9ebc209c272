"""The work-order contract as plain Python, shared by the queue, the orchestrator, the
workspace and the client (see docs/harness.md).

- `profiles`: named harness settings, their files and keys;
- `resolution`: the one full resolution of a work order's harness, every violation with
  its field path;
- `loop_parameters`: the loop strategies' parameter defaults and bounds;
- `retry`: the retry presets and bounds;
- `verification`: which gate plan a verification uses;
- `drivers`: the agent drivers' names and option schemas, as data;
- `scripted_script`: the script format of the scripted agent;
- `statuses`: facts about work-order statuses.

Layers: `agentgate.common` < `agentgate.harness` < services < clients. Nothing here imports
a service.
"""
