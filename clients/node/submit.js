#!/usr/bin/env node
'use strict';
// Submits a work order to AgentGate and prints its events until the run ends.
//
//   node clients/node/submit.js --path ./project --prompt "Fix the test" \
//       --agent scripted --agent-option-file script=fix.yaml [--max-iterations 3] [--json]
//
// Addresses come from AGENTGATE_QUEUE_ADDR / AGENTGATE_PERSISTENCE_ADDR (or --queue /
// --persistence); AGENTGATE_TOKEN and AGENTGATE_TLS_* as for every AgentGate client.
// Exit code: 0 succeeded, 1 did not succeed, 2 refused (bad input), 3 unreachable.

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const { AgentGate } = require('./agentgate');

const TERMINAL = new Set([
  'WORK_ORDER_STATUS_SUCCEEDED', 'WORK_ORDER_STATUS_FAILED',
  'WORK_ORDER_STATUS_CANCELED', 'WORK_ORDER_STATUS_TIMED_OUT',
]);

const USAGE = `usage: submit.js (--path DIR | --git-url URL [--ref REF]) (--prompt TEXT | --prompt-file F)
                 --agent NAME [--agent-option K=V]... [--agent-option-file K=FILE]...
                 [--max-iterations N] [--priority N] [--queue ADDR] [--persistence ADDR] [--json]`;

function parseArgs(argv) {
  const args = { agentOptions: {}, json: false };
  const keyValue = (flag, text) => {
    const at = text.indexOf('=');
    if (at < 1) throw new Error(`${flag}: expected KEY=VALUE, got ${JSON.stringify(text)}`);
    return [text.slice(0, at), text.slice(at + 1)];
  };
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${flag}: needs a value`);
      i += 1;
      return argv[i];
    };
    switch (flag) {
      case '--path': args.path = path.resolve(value()); break;
      case '--git-url': args.gitUrl = value(); break;
      case '--ref': args.ref = value(); break;
      case '--prompt': args.prompt = value(); break;
      case '--prompt-file': args.prompt = fs.readFileSync(value(), 'utf8'); break;
      case '--agent': args.agent = value(); break;
      case '--agent-option': { const [k, v] = keyValue(flag, value()); args.agentOptions[k] = v; break; }
      // The file's content is sent, so it works wherever the services run.
      case '--agent-option-file': {
        const [k, file] = keyValue(flag, value());
        args.agentOptions[k] = fs.readFileSync(file, 'utf8');
        break;
      }
      case '--max-iterations': args.maxIterations = Number.parseInt(value(), 10); break;
      case '--priority': args.priority = Number.parseInt(value(), 10); break;
      case '--queue': args.queue = value(); break;
      case '--persistence': args.persistence = value(); break;
      case '--json': args.json = true; break;
      case '-h': case '--help': console.log(USAGE); process.exit(0); break;
      default: throw new Error(`unknown flag ${flag}\n${USAGE}`);
    }
  }
  return args;
}

function buildSpec(args) {
  const spec = {
    task_prompt: args.prompt || '',
    agent: { name: args.agent || '', options: args.agentOptions },
    priority: args.priority || 0,
  };
  if (args.path) spec.source = { local_path: args.path };
  else if (args.gitUrl) spec.source = { git_url: args.gitUrl, ref: args.ref || '' };
  if (args.maxIterations) spec.harness = { loop_strategy: { max_iterations: args.maxIterations } };
  return spec;
}

function describe(event) {
  const where = event.iteration ? ` [iteration ${event.iteration}]` : '';
  let detail = '';
  if (event.payload === 'agent_output') detail = ` ${event.agent_output.text}`;
  else if (event.payload === 'strategy_decision') {
    const decision = event.strategy_decision.decision || {};
    detail = ` ${decision.should_continue ? 'continue' : 'stop'}: ${decision.reason}`;
  }
  else if (event.payload === 'run_ended') detail = ` ${event.run_ended.result || ''} ${event.run_ended.error || ''}`;
  return `#${event.seq} ${event.type}${where}${detail}`.trimEnd();
}

async function finalWorkOrder(client, workOrderId, waitMs = 30000) {
  // The worker completes the work order just after the run's last event.
  const deadline = Date.now() + waitMs;
  for (;;) {
    const workOrder = await client.workOrder(workOrderId);
    if (TERMINAL.has(workOrder.status) || Date.now() > deadline) return workOrder;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`error: ${err.message}`);
    return 2;
  }
  const client = new AgentGate({ queue: args.queue, persistence: args.persistence });
  try {
    const { work_order: workOrder, position } = await client.submit(buildSpec(args));
    const summary = { submitted: workOrder.id, run_id: workOrder.run_id, position };
    console.log(args.json ? JSON.stringify(summary) : `submitted ${workOrder.id} (run ${workOrder.run_id}) at position ${position}`);
    for await (const event of client.events(workOrder.id)) {
      console.log(args.json ? JSON.stringify(event) : describe(event));
    }
    const final = await finalWorkOrder(client, workOrder.id);
    const status = final.status.replace('WORK_ORDER_STATUS_', '');
    console.log(args.json ? JSON.stringify({ work_order_id: final.id, status, error: final.error }) : `${status} ${final.id}${final.error ? `: ${final.error}` : ''}`);
    return status === 'SUCCEEDED' ? 0 : 1;
  } catch (err) {
    if (err.code === grpc.status.INVALID_ARGUMENT || err.code === grpc.status.RESOURCE_EXHAUSTED) {
      console.error(`refused (${grpc.status[err.code]}): ${err.details}`);
      return 2;
    }
    if (err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.UNAUTHENTICATED) {
      console.error(`cannot reach AgentGate (${grpc.status[err.code]}): ${err.details}`);
      return 3;
    }
    throw err;
  } finally {
    client.close();
  }
}

main().then((code) => { process.exitCode = code; }, (err) => { console.error(err); process.exitCode = 1; });
