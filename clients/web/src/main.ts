// The dashboard: hash routes (#/, #/wo/<id>, #/queue, #/submit), plain DOM, the generated
// clients of ./api.ts. docs/dashboard.md describes the pages.
import "./style.css";
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { toJson, toJsonString } from "@bufbuild/protobuf";
import { CALL_TIMEOUT_MS, persistence, queue } from "./api.js";
import { age, clear, errorText, h } from "./dom.js";
import { followEvents } from "./events.js";
import { VirtualList } from "./virtual.js";
import { RunEventSchema, type RunEvent } from "./gen/agentgate/v1/events_pb.js";
import {
  WorkOrderStatus,
  RunResult,
  BuildErrorType,
  IterationErrorType,
  type Run,
  type WorkOrder,
  type IterationData,
  type AgentResult,
  type VerificationReport,
} from "./gen/agentgate/v1/common_pb.js";

const app = document.getElementById("app") as HTMLElement;
const opts = { timeoutMs: CALL_TIMEOUT_MS };
/** Ends whatever the current page keeps running (streams, timers) when the route changes. */
let pageAbort = new AbortController();

const ACTIVE = new Set([WorkOrderStatus.PENDING, WorkOrderStatus.RUNNING]);

function statusName(status: WorkOrderStatus): string {
  return (WorkOrderStatus[status] ?? "UNSPECIFIED").toLowerCase();
}

function badge(text: string, kind: string): HTMLElement {
  return h("span", { class: `badge ${kind}` }, text);
}

function statusBadge(status: WorkOrderStatus): HTMLElement {
  const name = statusName(status);
  return badge(name, name);
}

function showError(target: HTMLElement, err: unknown): void {
  const text =
    err instanceof ConnectError && err.code === Code.Unauthenticated
      ? "Not logged in: run `agentgate dashboard` and open the URL it prints."
      : errorText(err);
  target.replaceChildren(h("p", { class: "error", "data-testid": "error" }, text));
}

function every(ms: number, signal: AbortSignal, task: () => Promise<void>): void {
  let running = false;
  const tick = async () => {
    if (running || signal.aborted) return;
    running = true;
    try {
      await task();
    } finally {
      running = false;
    }
  };
  void tick();
  const timer = setInterval(tick, ms);
  signal.addEventListener("abort", () => clearInterval(timer));
}

// -- work orders ------------------------------------------------------------------------

async function listPage(signal: AbortSignal): Promise<void> {
  const statusFilter = h("select", { "data-testid": "status-filter" }, h("option", { value: "" }, "all statuses"));
  for (const status of [1, 2, 3, 4, 5, 6] as WorkOrderStatus[]) {
    statusFilter.append(h("option", { value: String(status) }, statusName(status)));
  }
  const textFilter = h("input", { placeholder: "filter: id, agent, prompt", "data-testid": "text-filter" });
  const body = h("tbody");
  const message = h("div");
  app.replaceChildren(
    h("h1", {}, "Work orders"),
    h("div", { class: "filters" }, statusFilter, textFilter),
    message,
    h(
      "table",
      { class: "list", "data-testid": "work-orders" },
      h("thead", {}, h("tr", {}, ...["id", "status", "agent", "iterations", "age", "cost", "prompt"].map((t) => h("th", {}, t)))),
      body,
    ),
  );
  let orders: WorkOrder[] = [];
  const runs = new Map<string, Run>();
  const render = () => {
    const wanted = statusFilter.value ? Number(statusFilter.value) : null;
    const text = textFilter.value.trim().toLowerCase();
    const rows = orders
      .filter((wo) => wanted === null || wo.status === wanted)
      .filter((wo) => !text || [wo.id, wo.spec?.agent?.name ?? "", wo.spec?.taskPrompt ?? ""].some((s) => s.toLowerCase().includes(text)))
      .map((wo) => {
        const run = runs.get(wo.id);
        return h(
          "tr",
          { "data-id": wo.id },
          h("td", {}, h("a", { href: `#/wo/${wo.id}` }, wo.id)),
          h("td", {}, statusBadge(wo.status)),
          h("td", {}, wo.spec?.agent?.name ?? ""),
          h("td", {}, run ? `${run.iterationCount}/${run.maxIterations || "?"}` : "-"),
          h("td", {}, age(wo.createdAt ? timestampDate(wo.createdAt) : undefined)),
          h("td", {}, run && run.costUsd ? `$${run.costUsd.toFixed(4)}` : "-"),
          h("td", { class: "prompt" }, (wo.spec?.taskPrompt ?? "").slice(0, 80)),
        );
      });
    body.replaceChildren(...rows);
  };
  statusFilter.addEventListener("change", render);
  textFilter.addEventListener("input", render);
  // Live: the queue has no stream of its list, so the page asks again every 2 s.
  every(2000, signal, async () => {
    try {
      const [list, runList] = await Promise.all([
        queue.listWorkOrders({ pageSize: 200 }, opts),
        persistence.listRuns({ pageSize: 200 }, opts),
      ]);
      orders = list.workOrders;
      for (const run of runList.runs) runs.set(run.workOrderId, run);
      message.replaceChildren();
      render();
    } catch (err) {
      showError(message, err);
    }
  });
}

// -- one work order -----------------------------------------------------------------------

function eventSummary(event: RunEvent): string {
  const p = event.payload;
  switch (p.case) {
    case "agentOutput":
      return p.value.text.replace(/\s+$/, "");
    case "verificationComplete":
      return `${p.value.passed ? "passed" : "failed"}: ${p.value.summary}`;
    case "strategyDecision":
      return `${p.value.decision?.shouldContinue ? "continue" : "stop"}: ${p.value.decision?.reason ?? ""}`;
    case "iterationComplete":
      return `agent ${p.value.agentSuccess ? "ok" : "failed"}, verification ${p.value.verificationPassed ? "passed" : "failed"}`;
    case "runEnded":
      return `${RunResult[p.value.result]} ${p.value.error}`;
    case "snapshotCreated":
      return `${p.value.commit.slice(0, 10)} ${p.value.changedFiles.join(", ")}`;
    case "agentEnded":
      return `exit ${p.value.exitCode}${p.value.error ? `: ${p.value.error}` : ""}`;
    case undefined:
      return "";
    default: {
      // Any other payload, new fields included, as its JSON (from the generated schema).
      const json = toJson(RunEventSchema, event) as Record<string, unknown>;
      return JSON.stringify(json[p.case] ?? {}).slice(0, 200);
    }
  }
}

function eventRow(event: RunEvent): HTMLElement {
  const when = event.timestamp ? timestampDate(event.timestamp).toLocaleTimeString() : "";
  const kind = event.type.includes("failed") || event.type.includes("canceled") ? "bad" : event.type.includes("complete") ? "good" : "";
  return h(
    "div",
    { class: `event ${kind}`, "data-seq": String(event.seq), "data-type": event.type },
    h("span", { class: "seq" }, `#${event.seq}`),
    h("span", { class: "when" }, when),
    h("span", { class: "type" }, event.type),
    h("span", { class: "iter" }, event.iteration ? `it ${event.iteration}` : ""),
    h("span", { class: "summary" }, eventSummary(event)),
  );
}

function agentSection(result: AgentResult | undefined): HTMLElement {
  if (!result) return h("p", { class: "muted" }, "no agent result yet");
  const tail = (result.stdout + (result.stderr ? `\n[stderr]\n${result.stderr}` : "")).slice(-4000);
  return h(
    "div",
    { class: "agent" },
    h(
      "p",
      {},
      badge(result.success ? "agent ok" : "agent failed", result.success ? "succeeded" : "failed"),
      ` exit ${result.exitCode} · ${result.durationSeconds.toFixed(1)}s · tokens ${result.tokens?.total ?? 0n} · $${result.costUsd.toFixed(4)}`,
      result.sessionId ? ` · session ${result.sessionId}` : "",
      result.errorType ? ` · ${BuildErrorType[result.errorType]}: ${result.errorMessage}` : "",
    ),
    result.toolCalls.length
      ? h("details", {}, h("summary", {}, `${result.toolCalls.length} tool calls`), ...result.toolCalls.map((c) => h("div", { class: "tool" }, `${c.tool} (${c.durationSeconds.toFixed(1)}s)`)))
      : null,
    h("details", {}, h("summary", {}, "output tail"), h("pre", {}, tail || "(no output)")),
  );
}

function reportSection(report: VerificationReport | undefined): HTMLElement {
  if (!report) return h("p", { class: "muted" }, "no verification report");
  return h(
    "div",
    { class: "report", "data-testid": `report-${report.iteration}` },
    h("p", {}, badge(report.passed ? "verification passed" : "verification failed", report.passed ? "succeeded" : "failed"), ` ${report.summary}`),
    ...report.levels.map((level) =>
      h(
        "div",
        { class: "level" },
        h("p", {}, badge(level.level, !level.ran ? "skipped" : level.passed ? "succeeded" : "failed"), ` ${level.name}`, level.ran ? "" : ` (skipped: ${level.skipReason})`),
        ...level.checks
          .filter((check) => !check.passed)
          .map((check) =>
            h("div", { class: "check" }, h("p", {}, `✗ ${check.name}: ${check.command} (exit ${check.exitCode})`), h("pre", { class: "check-output" }, check.output.slice(-6000))),
          ),
      ),
    ),
  );
}

/** A run file named in an error (`agent-2.json`, `verification-2.json`): a link to the
 * iteration on this page that shows it (from GetAgentResult / GetVerificationReport data). */
function fileLink(file: string): HTMLElement {
  const n = file.match(/-(\d+)\.json$/)?.[1];
  if (!n) return h("code", {}, file);
  const link = h("button", { type: "button", class: "file-link" }, file);
  link.addEventListener("click", () => document.querySelector(`[data-testid=iteration-${n}]`)?.scrollIntoView());
  return link;
}

function iterationCard(run: Run, it: IterationData, result?: AgentResult, report?: VerificationReport): HTMLElement {
  const diffBox = h("div", { class: "diff" });
  const diffButton = h("button", { "data-testid": `diff-${it.iteration}` }, "Show diff");
  diffButton.addEventListener("click", async () => {
    diffBox.replaceChildren(h("p", { class: "muted" }, "loading…"));
    try {
      // The iteration's stored patch (docs/results.md): it outlives the workspace, which
      // retention deletes when the run ends.
      const { patch } = await persistence.getPatch({ runId: run.id, iteration: it.iteration }, opts);
      const text = patch ? new TextDecoder("utf-8", { fatal: false }).decode(patch.patch) : "";
      diffBox.replaceChildren(
        h("p", {}, `changed: ${patch?.changedFiles.join(", ") || "(nothing)"}`),
        h("pre", { class: "diff-text", "data-testid": `diff-text-${it.iteration}` }, text || "(empty diff)"),
      );
    } catch (err) {
      showError(diffBox, err);
    }
  });
  const ok = it.verificationPassed && it.agentSuccess;
  return h(
    "section",
    { class: "iteration", "data-testid": `iteration-${it.iteration}`, "data-passed": String(ok) },
    h(
      "h3",
      {},
      `Iteration ${it.iteration} `,
      badge(ok ? "passed" : "failed", ok ? "succeeded" : "failed"),
      it.errorType > IterationErrorType.NONE ? ` ${IterationErrorType[it.errorType]}: ${it.errorMessage}` : "",
    ),
    agentSection(result),
    reportSection(report),
    it.decision
      ? h("p", { class: "decision" }, `Strategy: ${it.decision.shouldContinue ? "continue" : "stop"} — ${it.decision.reason}`)
      : null,
    h("p", { class: "muted" }, `snapshot ${it.snapshotCommit.slice(0, 12) || "-"} `, it.snapshotId ? diffButton : ""),
    diffBox,
  );
}

async function workOrderPage(id: string, signal: AbortSignal): Promise<void> {
  const header = h("div", { class: "header" });
  const position = h("p", { class: "position", "data-testid": "position" });
  const runBox = h("div");
  const iterations = h("div", { class: "iterations" });
  const streamState = h("span", { class: "stream-state", "data-testid": "stream-state" }, "connecting");
  const detail = h("pre", { class: "event-detail", "data-testid": "event-detail" }, "click an event for all its fields");
  const list = new VirtualList<RunEvent>(22, (event) => {
    const row = eventRow(event);
    row.addEventListener("click", () => (detail.textContent = toJsonString(RunEventSchema, event, { prettySpaces: 2 })));
    return row;
  });
  list.element.setAttribute("data-testid", "events");
  const count = h("span", { "data-testid": "event-count" }, "0");
  app.replaceChildren(
    header,
    position,
    runBox,
    h("h2", {}, "Iterations"),
    iterations,
    h("h2", {}, "Events ", count, " ", streamState),
    h("div", { class: "events-pane" }, list.element, detail),
  );
  // Exposed for the browser tests: when each event arrived, and how many rows are drawn.
  const probe = ((window as unknown as { agentgateEvents?: object }).agentgateEvents = {
    arrivals: [] as { seq: number; at: number }[],
    list,
  });

  const renderHeader = (wo: WorkOrder) => {
    const cancel = h("button", { class: "danger", "data-testid": "cancel" }, "Cancel");
    cancel.addEventListener("click", async () => {
      try {
        renderHeader((await queue.cancelWorkOrder({ workOrderId: wo.id, reason: "canceled from the dashboard" }, opts)).workOrder!);
      } catch (err) {
        showError(runBox, err);
      }
    });
    header.replaceChildren(
      h("h1", {}, `Work order ${wo.id} `, h("span", { "data-testid": "wo-status" }, statusBadge(wo.status))),
      h(
        "p",
        { class: "muted" },
        `agent ${wo.spec?.agent?.name ?? ""} · run ${wo.runId} · trace `,
        h("code", { "data-testid": "trace-id" }, wo.traceId || "-"),
        ` · created ${age(wo.createdAt ? timestampDate(wo.createdAt) : undefined)}`,
      ),
      h("p", { class: "prompt" }, wo.spec?.taskPrompt ?? ""),
      wo.error ? h("p", { class: "error" }, wo.error) : "",
      ACTIVE.has(wo.status) ? cancel : "",
    );
  };

  const refresh = async () => {
    try {
      const wo = (await queue.getWorkOrder({ workOrderId: id }, opts)).workOrder!;
      renderHeader(wo);
      let run: Run | undefined;
      try {
        run = (await persistence.getRun({ runId: wo.runId }, opts)).run;
      } catch (err) {
        if (!(err instanceof ConnectError && err.code === Code.NotFound)) throw err;
      }
      if (!run) {
        runBox.replaceChildren(h("p", { class: "muted" }, "not started yet"));
        return;
      }
      const [its, results, reports] = await Promise.all([
        persistence.listIterations({ runId: run.id }, opts),
        persistence.listAgentResults({ runId: run.id }, opts),
        persistence.listVerificationReports({ runId: run.id }, opts),
      ]);
      const be = run.buildError;
      runBox.replaceChildren(
        h(
          "p",
          {},
          `Run ${run.id}: `,
          badge(RunResult[run.result] ?? "running", run.result === RunResult.SUCCEEDED ? "succeeded" : run.result ? "failed" : "running"),
          ` · iterations ${run.iterationCount}/${run.maxIterations} · tokens ${run.tokens?.total ?? 0n} · $${run.costUsd.toFixed(4)}`,
          run.branchName ? ` · branch ${run.branchName}` : "",
          run.stopReason ? ` · ${run.stopReason}` : "",
        ),
        be && be.type
          ? h(
              "div",
              { class: "build-error", "data-testid": "build-error" },
              h("p", {}, `${BuildErrorType[be.type]}: ${be.message}`),
              be.agentResultFile ? h("p", { class: "muted" }, "agent result: ", fileLink(be.agentResultFile)) : null,
              be.verificationFile ? h("p", { class: "muted" }, "verification: ", fileLink(be.verificationFile)) : null,
              be.stderrTail ? h("pre", {}, be.stderrTail) : null,
            )
          : "",
      );
      const sorted = [...its.iterations].sort((a, b) => a.iteration - b.iteration);
      iterations.replaceChildren(
        ...sorted.map((it) =>
          iterationCard(
            run!,
            it,
            results.results.filter((r) => r.iteration === it.iteration).at(-1),
            reports.reports.filter((r) => r.iteration === it.iteration).at(-1),
          ),
        ),
      );
    } catch (err) {
      showError(runBox, err);
    }
  };

  // While it waits: its place in the queue, live (WatchPosition streams every change).
  const watchPosition = async () => {
    try {
      for await (const change of queue.watchPosition({ workOrderId: id }, { signal })) {
        const p = change.position;
        if (!p || p.position === 0) break;
        const wait = p.estimatedWaitSeconds !== undefined ? `, estimated wait ${p.estimatedWaitSeconds.toFixed(0)}s` : "";
        position.textContent = `Queue position ${p.position} (${p.ahead} ahead)${wait}`;
      }
    } catch (err) {
      if (!signal.aborted) position.textContent = `position unavailable: ${errorText(err)}`;
      return;
    }
    position.textContent = "";
  };

  let pending: ReturnType<typeof setTimeout> | undefined;
  const refreshSoon = () => {
    clearTimeout(pending);
    pending = setTimeout(refresh, 300);
  };
  await refresh();
  void watchPosition();
  void followEvents(
    id,
    {
      onEvent(event) {
        probe.arrivals.push({ seq: Number(event.seq), at: performance.now() });
        list.push(event);
        count.textContent = String(list.length);
        if (!event.type.startsWith("agent:output")) refreshSoon();
      },
      onState(state, why) {
        streamState.textContent = why ? `${state} (${why})` : state;
        streamState.setAttribute("data-state", state);
      },
    },
    signal,
  );
}

// -- queue ------------------------------------------------------------------------------

async function queuePage(signal: AbortSignal): Promise<void> {
  const stats = h("div", { class: "stats", "data-testid": "queue-stats" });
  const body = h("tbody");
  const message = h("div");
  app.replaceChildren(
    h("h1", {}, "Queue"),
    stats,
    message,
    h(
      "table",
      { class: "list", "data-testid": "queue" },
      h("thead", {}, h("tr", {}, ...["position", "id", "state", "agent", "priority", "submitted", "estimated wait", ""].map((t) => h("th", {}, t)))),
      body,
    ),
  );
  every(2000, signal, async () => {
    try {
      const [s, list] = await Promise.all([
        queue.getQueueStats({}, opts),
        queue.listWorkOrders({ statuses: [WorkOrderStatus.PENDING, WorkOrderStatus.RUNNING], pageSize: 500 }, opts),
      ]);
      stats.replaceChildren(
        `running ${s.running}/${s.maxConcurrent} · waiting ${s.waiting}/${s.maxQueueSize} · ${s.accepting ? "accepting" : "NOT accepting"}`,
        s.averageWaitSeconds !== undefined ? ` · average wait ${s.averageWaitSeconds.toFixed(1)}s` : "",
      );
      const positions = await Promise.all(
        list.workOrders.map((wo) => queue.getPosition({ workOrderId: wo.id }, opts).catch(() => undefined)),
      );
      const rows = list.workOrders
        .map((wo, i) => ({ wo, pos: positions[i] }))
        .sort((a, b) => (a.pos?.position ?? 0) - (b.pos?.position ?? 0))
        .map(({ wo, pos }) => {
          const cancel = h("button", { class: "danger", "data-testid": `cancel-${wo.id}` }, "Cancel");
          cancel.addEventListener("click", async () => {
            cancel.setAttribute("disabled", "");
            try {
              await queue.cancelWorkOrder({ workOrderId: wo.id, reason: "canceled from the dashboard queue" }, opts);
            } catch (err) {
              showError(message, err);
            }
          });
          return h(
            "tr",
            { "data-id": wo.id },
            h("td", {}, pos && pos.position ? String(pos.position) : "-"),
            h("td", {}, h("a", { href: `#/wo/${wo.id}` }, wo.id)),
            h("td", {}, statusBadge(wo.status)),
            h("td", {}, wo.spec?.agent?.name ?? ""),
            h("td", {}, String(wo.spec?.priority ?? 0)),
            h("td", {}, age(wo.createdAt ? timestampDate(wo.createdAt) : undefined)),
            h("td", {}, pos?.estimatedWaitSeconds !== undefined ? `${pos.estimatedWaitSeconds.toFixed(0)}s` : "-"),
            h("td", {}, cancel),
          );
        });
      body.replaceChildren(...rows);
      message.replaceChildren();
    } catch (err) {
      showError(message, err);
    }
  });
}

// -- submit -----------------------------------------------------------------------------

function field(label: string, input: HTMLElement): HTMLElement {
  return h("label", {}, h("span", {}, label), input);
}

function submitPage(): void {
  const source = h("input", { name: "source", placeholder: "/path/to/project or https://…/repo.git", required: "" });
  const prompt = h("textarea", { name: "prompt", rows: "4", required: "" });
  const agent = h("input", { name: "agent", value: "claude-code" });
  const options = h("textarea", { name: "options", rows: "3", placeholder: '{"model": "…"} (JSON object of strings)' });
  const profile = h("input", { name: "profile", placeholder: "default" });
  const priority = h("input", { name: "priority", type: "number", value: "0" });
  const iterations = h("input", { name: "iterations", type: "number", min: "1", placeholder: "profile's" });
  const message = h("div");
  const form = h(
    "form",
    { class: "submit", "data-testid": "submit-form" },
    field("Source (path or git URL)", source),
    field("Prompt", prompt),
    field("Agent", agent),
    field("Agent options (JSON)", options),
    field("Profile", profile),
    field("Priority", priority),
    field("Max iterations", iterations),
    h("button", { type: "submit" }, "Submit"),
    message,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let agentOptions: Record<string, string> = {};
    try {
      agentOptions = options.value.trim() ? JSON.parse(options.value) : {};
    } catch (err) {
      showError(message, `Agent options: ${errorText(err)}`);
      return;
    }
    const where = source.value.trim();
    const isUrl = /^[a-z][a-z0-9+.-]*:\/\//i.test(where) || where.startsWith("git@");
    try {
      const response = await queue.submit(
        {
          spec: {
            taskPrompt: prompt.value,
            source: { kind: isUrl ? { case: "gitUrl", value: where } : { case: "localPath", value: where } },
            agent: { name: agent.value.trim(), options: agentOptions },
            priority: Number(priority.value || 0),
            harness: {
              profile: profile.value.trim(),
              loopStrategy: iterations.value ? { maxIterations: Number(iterations.value) } : undefined,
            },
          },
        },
        opts,
      );
      window.location.hash = `#/wo/${response.workOrder!.id}`;
    } catch (err) {
      showError(message, err);
    }
  });
  app.replaceChildren(h("h1", {}, "Submit a work order"), form);
}

// -- routing ----------------------------------------------------------------------------

function route(): void {
  pageAbort.abort();
  pageAbort = new AbortController();
  clear(app);
  const hash = window.location.hash || "#/";
  const wo = hash.match(/^#\/wo\/([\w.-]+)$/);
  if (wo) void workOrderPage(wo[1], pageAbort.signal);
  else if (hash === "#/queue") void queuePage(pageAbort.signal);
  else if (hash === "#/submit") submitPage();
  else void listPage(pageAbort.signal);
}

window.addEventListener("hashchange", route);
route();
