'use strict';
// A server that stops answering without closing its connections (SIGSTOP): an open watch (no
// deadline) and a unary call without a deadline fail with UNAVAILABLE within the keepalive bound
// instead of waiting forever. SESSIONKIT_ADDRESS names a server running in a process of its own,
// SESSIONKIT_SERVER_PID that process, which this test stops and then continues
// (tests/clients/test_node_client.py starts it).

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { connect, toStruct, SessionKitError } = require('../src/client');

const address = process.env.SESSIONKIT_ADDRESS;
const pid = Number(process.env.SESSIONKIT_SERVER_PID);
if (!address || !pid) throw new Error('SESSIONKIT_ADDRESS and SESSIONKIT_SERVER_PID must be set');

const KEEPALIVE_MS = 1000;
const KEEPALIVE_TIMEOUT_MS = 1000;
// A generous bound over keepalive + timeout: a ping is sent up to one interval after the stop.
const BOUND_MS = 8000;

test('a stopped server fails an open watch and a call without a deadline within the keepalive bound', async () => {
  const sk = connect(address, { keepaliveMs: KEEPALIVE_MS, keepaliveTimeoutMs: KEEPALIVE_TIMEOUT_MS });
  const ref = { appName: 'silence', userId: 'u', sessionId: `s-${randomUUID()}` };
  try {
    await sk.state.createSession({ session: ref });
    await sk.state.saveState({ session: ref, state: toStruct({ n: 1 }) });
    const watch = sk.state.watchState({ session: ref })[Symbol.asyncIterator]();
    const first = await watch.next(); // the current state: the stream is open
    assert.equal(first.done, false);

    process.kill(pid, 'SIGSTOP');
    const started = Date.now();
    try {
      const failures = await Promise.all([
        (async () => {
          while (!(await watch.next()).done) {
            // heartbeats or changes sent before the stop: keep reading until the stream fails
          }
          return null;
        })().catch((error) => error),
        sk.state.getState({ session: ref }).catch((error) => error), // no deadline
      ]);
      const elapsed = Date.now() - started;
      for (const error of failures) {
        assert.ok(error instanceof SessionKitError, `expected a SessionKitError, got ${error}`);
        assert.equal(error.codeName, 'UNAVAILABLE', error.message);
      }
      assert.ok(elapsed < BOUND_MS, `failed after ${elapsed} ms, past the ${BOUND_MS} ms bound`);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    // The server answers again once continued: the client reconnects.
    const read = await sk.state.getState({ session: ref }, { timeoutMs: 20000 });
    assert.ok(read.version >= 1);
  } finally {
    sk.close();
  }
});

test('keepalive options are checked', () => {
  assert.throws(() => connect(address, { keepaliveMs: 0 }), /keepaliveMs must be a positive integer/);
  assert.throws(() => connect(address, { keepaliveTimeoutMs: 1.5 }), /keepaliveTimeoutMs/);
});
