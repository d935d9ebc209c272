// Following a work order's events: replay after the last seq seen, then live; after a
// broken stream, reconnect from the last seq (persistence sends exactly the rest,
// docs/architecture.md "Events").
import { persistence } from "./api.js";
import type { RunEvent } from "./gen/agentgate/v1/events_pb.js";

export interface FollowHandlers {
  onEvent(event: RunEvent): void;
  onState(state: "live" | "reconnecting" | "ended", detail?: string): void;
}

export async function followEvents(workOrderId: string, handlers: FollowHandlers, signal: AbortSignal): Promise<void> {
  let lastSeq = 0n;
  let delay = 250;
  while (!signal.aborted) {
    try {
      handlers.onState("live");
      const stream = persistence.streamEvents({ workOrderId, afterSeq: lastSeq, follow: true }, { signal });
      for await (const response of stream) {
        const event = response.event;
        if (!event || event.seq <= lastSeq) continue;
        lastSeq = event.seq;
        handlers.onEvent(event);
        delay = 250;
      }
      handlers.onState("ended");
      return;
    } catch (err) {
      if (signal.aborted) return;
      handlers.onState("reconnecting", err instanceof Error ? err.message : String(err));
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }
}
