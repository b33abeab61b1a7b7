'use strict';
// Calls spread over every address of the target (round_robin), as over the replicas behind a
// Kubernetes headless Service. SESSIONKIT_ADDRESSES: host:port,host:port of servers that do not share
// storage, so where a session was created tells which server took the call.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { connect } = require('../src/client');

const addresses = (process.env.SESSIONKIT_ADDRESSES || '').split(',').filter(Boolean);
if (addresses.length < 2) throw new Error('SESSIONKIT_ADDRESSES must name at least two servers');

test('calls are spread round_robin over every address', async () => {
  const sk = connect(`ipv4:${addresses.join(',')}`);
  const owner = { appName: 'balancing', userId: `u-${randomUUID()}` };
  const perServer = addresses.map((address) => connect(address));
  try {
    const counts = () =>
      Promise.all(perServer.map(async (one) => (await one.state.listSessions(owner)).sessions.length));
    // A server's connection may become ready after the first calls went to another: keep calling
    // until every server has taken some (round_robin alternates once all are ready).
    let seen = addresses.map(() => 0);
    for (let i = 0; i < 200 && seen.some((n) => n === 0); i++) {
      await sk.state.createSession({ session: { ...owner, sessionId: `s${i}` } });
      if (i % 10 === 9) seen = await counts();
    }
    assert.ok(seen.every((n) => n > 0), `sessions per server: ${seen}`);
  } finally {
    sk.close();
    for (const one of perServer) one.close();
  }
});
