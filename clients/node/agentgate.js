'use strict';
// A small AgentGate client for Node.js: @grpc/grpc-js with the protos loaded at run time
// from protos/ (no generated code), so it always speaks the contract the services speak.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS_DIR = process.env.AGENTGATE_PROTOS_DIR || path.resolve(__dirname, '..', '..', 'protos');
const DEFAULT_ADDRESSES = { queue: '127.0.0.1:50051', persistence: '127.0.0.1:50054' };
// The servers accept messages up to 16 MiB; so do we.
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
// A follower reconnects from its last seq after these (a restart, or dropped for being slow).
const RECONNECT_CODES = new Set([grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED]);
const MAX_RECONNECTS = 30;

/** Loads agentgate.v1 from the .proto files (field names as in the protos, enums as names). */
function loadProtos(protosDir = PROTOS_DIR) {
  const files = ['queue.proto', 'persistence.proto'].map((name) => path.join(protosDir, 'agentgate', 'v1', name));
  const definition = protoLoader.loadSync(files, {
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [protosDir],
  });
  return grpc.loadPackageDefinition(definition).agentgate.v1;
}

/** The client token, found as the Python clients find it: AGENTGATE_TOKEN, else the file
 * AGENTGATE_TOKEN_FILE names, else $AGENTGATE_HOME/auth/token (what `agentgate up` made),
 * '' when there is none. */
function clientToken(env = process.env) {
  if (env.AGENTGATE_TOKEN && env.AGENTGATE_TOKEN.trim()) return env.AGENTGATE_TOKEN.trim();
  const home = env.AGENTGATE_HOME || path.join(os.homedir(), '.agentgate');
  const file = env.AGENTGATE_TOKEN_FILE || path.join(home, 'auth', 'token');
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return '';
  }
}

/** Channel credentials: TLS when AGENTGATE_TLS_CA is set (with a client certificate when
 * AGENTGATE_TLS_CLIENT_CERT/KEY are), else plaintext; plus the bearer client token (see
 * clientToken) on every call. */
function credentials(env = process.env) {
  const token = clientToken(env);
  let channel = grpc.credentials.createInsecure();
  if (env.AGENTGATE_TLS_CA) {
    const read = (name) => (env[name] ? fs.readFileSync(env[name]) : null);
    channel = grpc.credentials.createSsl(
      read('AGENTGATE_TLS_CA'),
      read('AGENTGATE_TLS_CLIENT_KEY'),
      read('AGENTGATE_TLS_CLIENT_CERT'),
    );
  }
  const metadata = new grpc.Metadata();
  if (token) metadata.set('authorization', `Bearer ${token}`);
  return { channel, metadata };
}

/** Stubs for the queue and persistence services. */
class AgentGate {
  constructor({ queue, persistence, env = process.env, protosDir } = {}) {
    const v1 = loadProtos(protosDir);
    const { channel, metadata } = credentials(env);
    const options = {
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    };
    if (env.AGENTGATE_TLS_SERVER_NAME) options['grpc.ssl_target_name_override'] = env.AGENTGATE_TLS_SERVER_NAME;
    this.metadata = metadata;
    this.queue = new v1.QueueService(
      queue || env.AGENTGATE_QUEUE_ADDR || DEFAULT_ADDRESSES.queue, channel, options);
    this.persistence = new v1.PersistenceService(
      persistence || env.AGENTGATE_PERSISTENCE_ADDR || DEFAULT_ADDRESSES.persistence, channel, options);
  }

  close() {
    this.queue.close();
    this.persistence.close();
  }

  _unary(stub, method, request, timeoutSeconds = 30) {
    const deadline = new Date(Date.now() + timeoutSeconds * 1000);
    return new Promise((resolve, reject) => {
      stub[method](request, this.metadata, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
    });
  }

  /** Submits a WorkOrderSpec (a plain object with the proto's field names). */
  submit(spec) {
    return this._unary(this.queue, 'Submit', { spec });
  }

  workOrder(workOrderId) {
    return this._unary(this.queue, 'GetWorkOrder', { work_order_id: workOrderId }).then((r) => r.work_order);
  }

  position(workOrderId) {
    return this._unary(this.queue, 'GetPosition', { work_order_id: workOrderId });
  }

  cancel(workOrderId, reason = '') {
    return this._unary(this.queue, 'CancelWorkOrder', { work_order_id: workOrderId, reason })
      .then((r) => r.work_order);
  }

  /** Yields the events of a work order with seq > afterSeq, live until its run ends;
   * a dropped stream is resumed from the last seq seen (nothing missed or doubled). */
  async *events(workOrderId, { afterSeq = 0, follow = true } = {}) {
    let last = afterSeq;
    let attempt = 0;
    for (;;) {
      const call = this.persistence.StreamEvents(
        { work_order_id: workOrderId, after_seq: last, follow }, this.metadata);
      try {
        for await (const response of call) {
          attempt = 0;
          const event = response.event;
          if (Number(event.seq) <= last) continue;
          last = Number(event.seq);
          yield event;
        }
        return;
      } catch (err) {
        attempt += 1;
        if (!RECONNECT_CODES.has(err.code) || attempt > MAX_RECONNECTS) throw err;
        await new Promise((resolve) => setTimeout(resolve, Math.min(200 * attempt, 2000)));
      }
    }
  }
}

module.exports = { AgentGate, loadProtos, credentials, clientToken, PROTOS_DIR };
