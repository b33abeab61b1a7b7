'use strict';
// The Node.js client against a real sessionkit server: SESSIONKIT_ADDRESS (host:port) names it,
// SESSIONKIT_API_KEY the key its calls carry (if the server checks keys). The agent test needs the
// server's LLM to answer "You said: <the user's message>" (tests/project/test_node_client.py
// starts such a server).

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { connect, toStruct, fromStruct, SessionKitError, DOMAIN } = require('../src/client');

const address = process.env.SESSIONKIT_ADDRESS;
if (!address) throw new Error('SESSIONKIT_ADDRESS is not set: the address of the server under test');

let sk;
const app = 'node-client';
const newRef = () => ({ appName: app, userId: 'alice', sessionId: `s-${randomUUID()}` });

before(() => {
  sk = connect(address, { apiKey: process.env.SESSIONKIT_API_KEY || undefined });
});

after(() => sk.close());

test('creates a session, saves state and reads it back', async () => {
  const ref = newRef();
  const created = await sk.state.createSession({ session: ref });
  assert.equal(created.created, true);
  assert.equal(created.session.ref.sessionId, ref.sessionId);

  const state = { step: 2, name: 'Ada', tags: ['a', 'b'], nested: { ok: true, none: null } };
  const saved = await sk.state.saveState({ session: ref, state: toStruct(state) });
  assert.ok(saved.version >= 1);

  const read = await sk.state.getState({ session: ref });
  assert.deepEqual(fromStruct(read.state), state);
  assert.equal(read.version, saved.version);
});

test('concurrent increments all count', async () => {
  const ref = newRef();
  await sk.state.createSession({ session: ref });
  const n = 20;
  const replies = await Promise.all(
    Array.from({ length: n }, () => sk.state.incrementState({ session: ref, key: 'hits', delta: 1 })),
  );
  // Each increment saw a distinct value (none lost, none applied twice), and the total is exact.
  assert.deepEqual(
    replies.map((r) => r.value).sort((a, b) => a - b),
    Array.from({ length: n }, (_, i) => i + 1),
  );
  const read = await sk.state.getState({ session: ref, keys: ['hits'] });
  assert.deepEqual(fromStruct(read.state), { hits: n });
});

test('adds a memory and finds it by search', async () => {
  const ref = newRef();
  const text = 'Alice prefers window seats on long flights';
  const added = await sk.memory.addMemory({
    session: ref,
    text,
    memoryType: 'MEMORY_TYPE_LONG',
    metadata: toStruct({ topic: 'travel' }),
  });
  assert.equal(added.memory.text, text);
  assert.equal(added.memory.memoryType, 'MEMORY_TYPE_LONG');
  assert.ok(added.memory.id);

  await sk.memory.addMemory({ session: ref, text: 'The build server runs on port 8080' });
  const found = await sk.memory.searchMemories({ session: ref, query: 'which seat does Alice like?', limit: 2 });
  assert.ok(found.hits.length >= 1);
  assert.equal(found.hits[0].memory.id, added.memory.id);
  assert.deepEqual(fromStruct(found.hits[0].memory.metadata), { topic: 'travel' });
});

test('streams an agent chat turn', async () => {
  const ref = newRef();
  await sk.state.createSession({ session: ref });
  await sk.agent.createAgent({
    session: ref,
    // agent.session is ignored by the service, but a keyed caller's request must not name another
    // app anywhere: unset, it would count as the default app.
    agent: { name: 'echo', session: ref, instructions: 'Repeat the user.', memory: false, knowledge: false },
  });

  const message = 'hello from node over a bidirectional stream';
  const kinds = [];
  let streamed = '';
  let result = null;
  for await (const reply of sk.chatStream({ session: ref, agentName: 'echo', message, stream: true })) {
    kinds.push(reply.kind);
    if (reply.kind === 'textDelta') streamed += reply.textDelta.text;
    if (reply.kind === 'result') result = reply.result;
  }
  assert.equal(kinds[0], 'started');
  assert.equal(kinds.at(-1), 'result');
  assert.ok(kinds.filter((k) => k === 'textDelta').length > 1, `expected several deltas: ${kinds}`);
  assert.equal(result.text, `You said: ${message}`);
  assert.equal(streamed, result.text);
  assert.ok(result.metadata.turnId);

  // The turn is in the session's event log: the user's message, then the reply.
  const events = await sk.state.listEvents({ session: ref });
  const texts = events.events.map((e) => JSON.stringify(e));
  assert.ok(texts.some((t) => t.includes(message)));
  assert.ok(texts.some((t) => t.includes(`You said: ${message}`)));
});

test('answers a CLIENT tool call within the stream', async () => {
  const ref = newRef();
  await sk.state.createSession({ session: ref });
  await sk.agent.createAgent({ session: ref, agent: { name: 'echo', session: ref, memory: false, knowledge: false } });
  const lookup = {
    name: 'lookup',
    description: 'Looks a word up',
    parameters: toStruct({ type: 'object', properties: { q: { type: 'string' } }, required: ['q'] }),
    execution: 'CLIENT',
  };

  const calls = [];
  const replies = [];
  // The test's model calls `lookup` for a message starting with "tool:", then repeats its result.
  const start = { session: ref, agentName: 'echo', message: 'tool: weather', tools: [lookup] };
  const onToolCall = (call) => {
    calls.push(call);
    return { answer: JSON.parse(call.argumentsJson).q.toUpperCase() };
  };
  for await (const reply of sk.chatStream(start, { onToolCall })) replies.push(reply);

  assert.equal(calls.length, 1);
  assert.equal(calls[0].toolName, 'lookup');
  assert.deepEqual(JSON.parse(calls[0].argumentsJson), { q: 'weather' });
  const completed = replies.filter((r) => r.kind === 'toolCallCompleted').map((r) => r.toolCallCompleted);
  assert.equal(completed.length, 1);
  assert.equal(completed[0].callId, calls[0].callId);
  assert.equal(completed[0].execution, 'CLIENT');
  assert.deepEqual(JSON.parse(completed[0].resultJson), { answer: 'WEATHER' });
  const result = replies.at(-1).result;
  assert.ok(result.text.startsWith('The tool said: '), result.text);
  assert.ok(result.text.includes('WEATHER'), result.text);

  // Without onToolCall the call gets an error result, and the turn still ends.
  const unanswered = [];
  for await (const reply of sk.chatStream({ ...start, message: 'tool: rain' })) unanswered.push(reply);
  const failed = unanswered.find((r) => r.kind === 'toolCallCompleted').toolCallCompleted;
  assert.match(failed.error, /no handler for the CLIENT tool lookup/);
  assert.equal(unanswered.at(-1).kind, 'result');
});

test('streams a workflow (a server-streaming RPC)', async () => {
  const ref = newRef();
  await sk.state.createSession({ session: ref });
  await sk.agent.createAgent({ session: ref, agent: { name: 'echo', session: ref, memory: false, knowledge: false } });

  const tasks = [
    { name: 'draft', agentName: 'echo', description: 'Draft a greeting for Ada' },
    { name: 'review', agentName: 'echo', description: 'Review the draft', contextTasks: ['draft'] },
  ];
  const kinds = [];
  const streamed = ['', ''];
  let result = null;
  for await (const reply of sk.agent.runWorkflow({ session: ref, tasks, stream: true })) {
    kinds.push(reply.kind === 'textDelta' ? 'textDelta' : `${reply.kind}:${reply[reply.kind].taskIndex ?? ''}`);
    if (reply.kind === 'textDelta') streamed[reply.textDelta.taskIndex] += reply.textDelta.text;
    if (reply.kind === 'result') result = reply.result;
  }
  const milestones = kinds.filter((k) => k !== 'textDelta');
  assert.deepEqual(milestones, ['taskStarted:0', 'taskResult:0', 'taskStarted:1', 'taskResult:1', 'result:']);
  assert.equal(result.taskResults.length, 2);
  assert.ok(result.taskResults[0].output.startsWith('You said: '));
  assert.ok(result.taskResults[0].output.includes('Draft a greeting for Ada'));
  assert.deepEqual(streamed, result.taskResults.map((t) => t.output));
  assert.equal(result.finalOutput, result.taskResults[1].output);
});

test('a busy conversation answers CONVERSATION_BUSY with its retry delay', async () => {
  const ref = newRef();
  await sk.state.createSession({ session: ref });
  await sk.agent.createAgent({ session: ref, agent: { name: 'echo', session: ref, memory: false, knowledge: false } });

  // The test's LLM server takes seconds over a message that starts with "slow:".
  const slow = 'slow: a long answer';
  const turn = sk.chatStream({ session: ref, agentName: 'echo', message: slow })[Symbol.asyncIterator]();
  assert.equal((await turn.next()).value.kind, 'started'); // the turn now holds the conversation

  const busy = await sk.agent
    .chat({ session: ref, agentName: 'echo', message: 'me too', options: { busyPolicy: 'FAIL_FAST' } })
    .catch((e) => e);
  assert.ok(busy instanceof SessionKitError, String(busy));
  assert.equal(busy.codeName, 'ABORTED');
  assert.equal(busy.reason, 'CONVERSATION_BUSY');
  assert.deepEqual(busy.metadata, { session_id: ref.sessionId });
  assert.ok(busy.retryAfter > 0, `retryAfter: ${busy.retryAfter}`);

  let last;
  for (let next = await turn.next(); !next.done; next = await turn.next()) last = next.value;
  assert.equal(last.kind, 'result');
  assert.equal(last.result.text, `You said: ${slow}`);
});

test('a bad request carries its reason and field violations', async () => {
  const bad = { appName: app, userId: 'bad user!', sessionId: '../etc/passwd' };
  const error = await sk.state.createSession({ session: bad }).then(
    () => assert.fail('createSession accepted an invalid session reference'),
    (e) => e,
  );
  assert.ok(error instanceof SessionKitError, String(error));
  assert.equal(error.codeName, 'INVALID_ARGUMENT');
  assert.equal(error.reason, 'INVALID_ARGUMENT');
  assert.equal(error.domain, DOMAIN);
  const fields = error.violations.map((v) => v.field).sort();
  assert.deepEqual(fields, ['session.session_id', 'session.user_id']);
  for (const v of error.violations) assert.ok(v.description.length > 0, `${v.field} has no description`);
});

test('the API key goes with every call', { skip: !process.env.SESSIONKIT_API_KEY && 'no SESSIONKIT_API_KEY' }, async () => {
  const anonymous = connect(address);
  try {
    const error = await anonymous.state.createSession({ session: newRef() }).catch((e) => e);
    assert.equal(error.codeName, 'UNAUTHENTICATED');
    const wrong = connect(address, { apiKey: 'not-the-key-0123456789' });
    const denied = await wrong.state.createSession({ session: newRef() }).catch((e) => e);
    wrong.close();
    assert.equal(denied.codeName, 'UNAUTHENTICATED');
  } finally {
    anonymous.close();
  }
});

test('specific reasons: a missing session, a stale version', async () => {
  const missing = await sk.state.getState({ session: newRef() }).catch((e) => e);
  assert.equal(missing.codeName, 'NOT_FOUND');
  assert.equal(missing.reason, 'SESSION_NOT_FOUND');

  const ref = newRef();
  await sk.state.createSession({ session: ref, initialState: toStruct({ n: 1 }) });
  const stale = await sk.state
    .saveState({ session: ref, state: toStruct({ n: 2 }), expectedVersion: 99 })
    .catch((e) => e);
  assert.equal(stale.codeName, 'ABORTED');
  assert.equal(stale.reason, 'STATE_CONFLICT');
});
