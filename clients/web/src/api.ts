// The services the dashboard calls, reached through the gateway with the generated descriptors: the
// Connect protocol, binary protobuf, same origin (the session cookie is sent by the browser).
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { QueueService } from "./gen/agentgate/v1/queue_pb.js";
import { PersistenceService } from "./gen/agentgate/v1/persistence_pb.js";

const transport = createConnectTransport({
  baseUrl: window.location.origin,
  useBinaryFormat: true,
  // Only the session cookie: nothing else identifies the browser.
  fetch: (input, init) => globalThis.fetch(input, { ...init, credentials: "same-origin" }),
});

export const queue: Client<typeof QueueService> = createClient(QueueService, transport);
export const persistence: Client<typeof PersistenceService> = createClient(PersistenceService, transport);

/** Deadline for unary calls, in ms (sent as connect-timeout-ms, passed on upstream). */
export const CALL_TIMEOUT_MS = 10_000;
