"""The dashboard gateway (`python -m agentgate.client.gateway`, started by `agentgate up`): serves
the built dashboard and bridges browsers to the four services over the Connect protocol
(docs/dashboard.md). A client-side process: it imports `agentgate.common` and the stubs only."""
