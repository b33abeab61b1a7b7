'use strict';
// A thin Node.js client for sessionkit's gRPC services, loaded from protos/ at run time
// with @grpc/proto-loader (no generated code to keep in step with the contract).
//
//   const { connect, toStruct, fromStruct } = require('@sessionkit/client');
//   const sk = connect('127.0.0.1:50051', { apiKey: process.env.SESSIONKIT_API_KEY });
//   const ref = { appName: 'app', userId: 'alice', sessionId: 's1' };
//   await sk.state.createSession({ session: ref });
//   await sk.state.saveState({ session: ref, state: toStruct({ step: 1 }) });
//   fromStruct((await sk.state.getState({ session: ref })).state); // { step: 1 }
//   sk.close();
//
// Messages are plain objects with lowerCamelCase field names (`sessionId`), enums as
// their names ('MEMORY_TYPE_LONG'), int64 as Number, oneofs with a `kind`-style field
// naming the member set (ChatStreamResponse.kind === 'textDelta'), unset fields as their
// defaults. Every failure rejects (or throws from the stream) with a SessionKitError
// carrying the server's reason and field violations (./errors.js).

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { SessionKitError, fromServiceError, decodeStatus, DOMAIN, STATUS_DETAILS_KEY } = require('./errors');

const DEFAULT_PROTOS_DIR = path.resolve(__dirname, '..', '..', '..', 'protos');
const PROTO_FILES = ['state', 'memory', 'knowledge', 'agent'].map((name) => `sessionkit/v1/${name}.proto`);
const API_KEY_METADATA = 'x-api-key';

// As the Python SDK's channel (sdk/sessionkit/transport.py): large messages, keepalive, reconnect
// attempts at most a second apart (gRPC's default backoff grows to 120 s, so a restarted server
// would go unnoticed), and round_robin over every address a name resolves to (with `dns:///` and a
// Kubernetes headless Service, one address per replica) instead of pinning every call to the first.
//
// Silence: a server that stops answering without closing the connection (SIGSTOP, a dead host, a cut
// network) would leave a call without a deadline (a watch) waiting forever. The channel pings every
// `keepaliveMs` while calls are open and drops the connection when a ping is not answered within
// `keepaliveTimeoutMs`: every open call then fails with UNAVAILABLE within their sum (20 s by
// default, as the Python SDK's keepalive_seconds + keepalive_timeout). The servers accept pings
// every 10 s and more often without penalty (services/server.py).
const DEFAULT_KEEPALIVE_MS = 10000;
const DEFAULT_KEEPALIVE_TIMEOUT_MS = 10000;
const CHANNEL_OPTIONS = {
  'grpc.max_send_message_length': 64 << 20,
  'grpc.max_receive_message_length': 64 << 20,
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.min_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 1000,
  'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
};

const LOADER_OPTIONS = { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true };

/**
 * Loads the sessionkit.v1 package from `protosDir` (default: the repository's protos/).
 * @returns {Object} grpc.loadPackageDefinition's `sessionkit.v1` namespace
 */
function loadProtos(protosDir = DEFAULT_PROTOS_DIR) {
  const definition = protoLoader.loadSync(PROTO_FILES, { ...LOADER_OPTIONS, includeDirs: [protosDir] });
  return grpc.loadPackageDefinition(definition).sessionkit.v1;
}

function lowerFirst(name) {
  return name.charAt(0).toLowerCase() + name.slice(1);
}

// callOptions: { timeoutMs, metadata: {name: value} } -> grpc-js's (metadata, options).
function callArgs(callOptions = {}) {
  const metadata = new grpc.Metadata();
  for (const [name, value] of Object.entries(callOptions.metadata || {})) metadata.set(name, value);
  const options = {};
  if (callOptions.timeoutMs != null) options.deadline = new Date(Date.now() + callOptions.timeoutMs);
  return [metadata, options];
}

async function* readStream(call) {
  try {
    for await (const message of call) yield message;
  } catch (error) {
    throw error.code !== undefined ? fromServiceError(error) : error;
  } finally {
    call.cancel(); // no-op after the status; stops the server's work when the caller breaks out
  }
}

/**
 * Wraps a generated stub: for every RPC, `lowerCamelName(request, callOptions)`:
 * - unary: a Promise of the response;
 * - server streaming: an async iterable of the responses (breaking out cancels the call);
 * - client or bidirectional streaming: the grpc-js call (`stub.x(metadata, options)`), as it is
 *   (sessionkit's are ChatStream, wrapped by chatStream below, and UploadKnowledgeFile).
 * `stub` is the grpc-js client itself.
 */
function wrapService(stub) {
  const wrapped = { stub };
  for (const [name, method] of Object.entries(stub.constructor.service)) {
    const key = lowerFirst(method.originalName || name);
    const raw = stub[name].bind(stub);
    if (!method.requestStream && !method.responseStream) {
      wrapped[key] = (request = {}, callOptions) =>
        new Promise((resolve, reject) => {
          raw(request, ...callArgs(callOptions), (error, response) =>
            error ? reject(fromServiceError(error)) : resolve(response),
          );
        });
    } else if (!method.requestStream) {
      wrapped[key] = (request = {}, callOptions) => readStream(raw(request, ...callArgs(callOptions)));
    } else {
      wrapped[key] = (callOptions) => raw(...callArgs(callOptions));
    }
  }
  return wrapped;
}

/**
 * One agent turn over AgentService.ChatStream, as an async iterable of ChatStreamResponse
 * messages (`started`, `textDelta`s, `toolCall`s, `toolCallCompleted`s, then `result`).
 * CLIENT tool calls are answered with `onToolCall(call)`'s value (sent as JSON; a thrown error
 * is sent as the tool's error; without onToolCall, every call gets an error result so that the turn
 * goes on). The stream is half-closed after `result`.
 *
 * @param {Object} agentService the wrapped AgentService (connect(...).agent)
 * @param {Object} start a ChatStreamStart ({ session, agentName, message, stream: true, ... })
 * @param {{onToolCall?: function(Object): any, timeoutMs?: number, metadata?: Object}} [options]
 */
async function* chatStream(agentService, start, options = {}) {
  const call = agentService.chatStream(options);
  call.write({ start });
  const handler =
    options.onToolCall ||
    ((toolCall) => {
      throw new Error(`no handler for the CLIENT tool ${toolCall.toolName} (chatStream's onToolCall)`);
    });
  const answer = async (toolCall) => {
    try {
      const value = await handler(toolCall);
      call.write({ toolResult: { callId: toolCall.callId, resultJson: JSON.stringify(value ?? null) } });
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      call.write({ toolResult: { callId: toolCall.callId, error: message } });
    }
  };
  for await (const message of readStream(call)) {
    if (message.kind === 'toolCall') await answer(message.toolCall);
    if (message.kind === 'result') call.end();
    yield message;
  }
}

/**
 * Connects to a sessionkit server (or the per-service addresses of a split deployment).
 *
 * @param {string|{state: string, memory: string, knowledge: string, agent: string}} address
 *   "host:port", "dns:///name:port" (round_robin over every address), or one per service
 * @param {{apiKey?: string, credentials?: import('@grpc/grpc-js').ChannelCredentials,
 *   keepaliveMs?: number, keepaliveTimeoutMs?: number, channelOptions?: Object, protosDir?: string}}
 *   [options] `apiKey` is sent as `x-api-key` on every call; `credentials` default to insecure (use
 *   grpc.credentials.createSsl(ca) for TLS); a server that stops answering fails every open call
 *   (streams included) within `keepaliveMs + keepaliveTimeoutMs` (10 s + 10 s by default)
 * @returns {{state: Object, memory: Object, knowledge: Object, agent: Object,
 *   chatStream: function(Object, Object=): AsyncIterable<Object>, close: function(): void}}
 */
function positiveMs(value, fallback, name) {
  if (value === undefined || value === null) return fallback;
  if (!Number.isInteger(value) || value < 1) {
    throw new TypeError(`connect: ${name} must be a positive integer of milliseconds, not ${value}`);
  }
  return value;
}

function connect(address, options = {}) {
  const v1 = loadProtos(options.protosDir);
  const credentials = options.credentials || grpc.credentials.createInsecure();
  const interceptors = [];
  if (options.apiKey) {
    // An interceptor, not call credentials: grpc-js refuses call credentials on an insecure channel,
    // and a server on loopback or behind a TLS-terminating proxy is a normal deployment.
    interceptors.push(
      (callOptions, nextCall) =>
        new grpc.InterceptingCall(nextCall(callOptions), {
          start(metadata, listener, next) {
            metadata.set(API_KEY_METADATA, options.apiKey);
            next(metadata, listener);
          },
        }),
    );
  }
  const keepalive = {
    'grpc.keepalive_time_ms': positiveMs(options.keepaliveMs, DEFAULT_KEEPALIVE_MS, 'keepaliveMs'),
    'grpc.keepalive_timeout_ms': positiveMs(
      options.keepaliveTimeoutMs,
      DEFAULT_KEEPALIVE_TIMEOUT_MS,
      'keepaliveTimeoutMs',
    ),
  };
  const channelOptions = { ...CHANNEL_OPTIONS, ...keepalive, ...(options.channelOptions || {}) };
  const addresses =
    typeof address === 'string'
      ? { state: address, memory: address, knowledge: address, agent: address }
      : address;
  const channels = new Map(); // one channel per distinct address, shared by its services' stubs
  const make = (Service, target) => {
    if (!target) throw new TypeError(`connect: no address for ${Service.serviceName}`);
    if (!channels.has(target)) channels.set(target, new grpc.Channel(target, credentials, channelOptions));
    return wrapService(new Service(target, credentials, { channelOverride: channels.get(target), interceptors }));
  };
  const client = {
    state: make(v1.StateService, addresses.state),
    memory: make(v1.MemoryService, addresses.memory),
    knowledge: make(v1.KnowledgeService, addresses.knowledge),
    agent: make(v1.AgentService, addresses.agent),
    close() {
      for (const channel of channels.values()) channel.close();
    },
  };
  client.chatStream = (start, chatOptions) => chatStream(client.agent, start, chatOptions);
  return client;
}

// google.protobuf.Struct / Value <-> plain JSON values (proto-loader hands them over as messages).

/** A JSON value as a google.protobuf.Value message. */
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof value === 'number') return { numberValue: value };
  if (typeof value === 'string') return { stringValue: value };
  if (typeof value === 'boolean') return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  if (typeof value === 'object') return { structValue: toStruct(value) };
  throw new TypeError(`not a JSON value: ${typeof value}`);
}

/** A plain object as a google.protobuf.Struct message. */
function toStruct(object) {
  if (object === null || typeof object !== 'object' || Array.isArray(object)) {
    throw new TypeError('toStruct: expected a plain object');
  }
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, toValue(v)])) };
}

/** A google.protobuf.Value message as the JSON value it holds. */
function fromValue(value) {
  if (!value) return null;
  switch (value.kind) {
    case 'numberValue':
      return value.numberValue;
    case 'stringValue':
      return value.stringValue;
    case 'boolValue':
      return value.boolValue;
    case 'listValue':
      return (value.listValue.values || []).map(fromValue);
    case 'structValue':
      return fromStruct(value.structValue);
    default:
      return null;
  }
}

/** A google.protobuf.Struct message as a plain object ({} when unset). */
function fromStruct(struct) {
  if (!struct) return {};
  return Object.fromEntries(Object.entries(struct.fields || {}).map(([k, v]) => [k, fromValue(v)]));
}

module.exports = {
  connect,
  chatStream,
  loadProtos,
  wrapService,
  toStruct,
  fromStruct,
  toValue,
  fromValue,
  SessionKitError,
  fromServiceError,
  decodeStatus,
  DOMAIN,
  STATUS_DETAILS_KEY,
  DEFAULT_PROTOS_DIR,
};
