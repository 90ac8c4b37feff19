// The agent's durable usage outbox: every completed request's record is in
// the LMDB outbox before its response ends, so a killed agent (SIGKILL)
// loses none, and a restarted agent keeps appending after them; a full
// outbox makes the agent refuse new requests with 503 and a clear message.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startMock, answerText } from '../../tools/mockllm/mockllm.mjs';
import { startAgent, keyHash, dumpOutbox } from '../../agent/testing/agent.mjs';
import { tmpdir, until } from './lib/proc.mjs';
import path from 'node:path';

const KEY = 'sk-tg-outbox-test';
let mock;
before(async () => { mock = await startMock(); });
after(async () => { await mock?.stop(); });

function snapshot(policy = {}) {
  return {
    revision: '3',
    accounts: [{ id: 'acct', name: 'a', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' }],
    balances: [{ account_id: 'acct', bucket: 'credit', currency: 'USD', balance_nano: '1000000000000' }],
    keys: [{ id: 'k1', account_id: 'acct', secret_sha256: keyHash(KEY), status: 'KEY_STATUS_ACTIVE' }],
    channels: [{ id: 'ch', name: 'ch', provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`,
      credential: 'sk-upstream-up', route_type: 'ROUTE_TYPE_DIRECT' }],
    routes: [{ model: 'gpt-4o', tiers: [{ targets: [{ channel_id: 'ch' }] }] }],
    price_cards: [{ id: 'card', version: '1', effective_at_us: '0', currency: 'USD',
      entries: [{ model: 'gpt-4o', input_per_mtok_nano: '1000000000', output_per_mtok_nano: '1000000000' }] }],
    policy,
  };
}
const messages = [{ role: 'user', content: 'count me' }];

test('SIGKILL loses no completed request: every record is in the outbox, a restart appends after them', async () => {
  const dir = tmpdir('tg-outbox-');
  const agent = await startAgent(snapshot(), { dir });
  const client = new OpenAI({ apiKey: KEY, baseURL: agent.base, maxRetries: 0 });
  const ids = [];
  for (let i = 0; i < 6; i++) {
    const stream = i % 2 === 1;
    const { data, response } = await client.chat.completions.create({ model: 'gpt-4o', messages, stream }).withResponse();
    if (stream) for await (const c of data) void c; // read to the end
    ids.push(response.headers.get('x-request-id'));
  }
  await agent.proc.stop('SIGKILL');
  const held = dumpOutbox(path.join(dir, 'data'));
  assert.deepEqual(held.map((h) => h.record.request_id), ids);
  assert.deepEqual(held.map((h) => Number(h.seq)), [1, 2, 3, 4, 5, 6]);
  for (const h of held) {
    assert.equal(h.record.client_status, 200);
    assert.equal(h.record.key_id, 'k1');
    assert.ok(Number(h.record.usage.output_tokens) > 0);
  }
  // Restart on the same data dir (from the persisted snapshot): it appends after them.
  const again = await startAgent(null, { dir, noSnapshot: true });
  try {
    assert.match(again.proc.output(), /outbox holds 6 records/);
    const c2 = new OpenAI({ apiKey: KEY, baseURL: again.base, maxRetries: 0 });
    const { response } = await c2.chat.completions.create({ model: 'gpt-4o', messages }).withResponse();
    const all = again.outbox();
    assert.equal(all.length, 7);
    assert.equal(Number(all[6].seq), 7);
    assert.equal(all[6].record.request_id, response.headers.get('x-request-id'));
  } finally {
    await again.stop();
  }
});

test('a full outbox refuses new requests with 503 and says why', async () => {
  const agent = await startAgent(snapshot({ outbox_max_records: '2' }));
  try {
    const client = new OpenAI({ apiKey: KEY, baseURL: agent.base, maxRetries: 0 });
    await client.chat.completions.create({ model: 'gpt-4o', messages });
    await client.chat.completions.create({ model: 'gpt-4o', messages });
    await assert.rejects(client.chat.completions.create({ model: 'gpt-4o', messages }), (e) => {
      assert.equal(e.status, 503);
      assert.equal(e.code, 'usage_outbox_full');
      assert.match(e.message, /outbox holds 2 records/);
      return true;
    });
    assert.equal(agent.outbox().length, 2);
  } finally {
    await agent.stop();
  }
});

test('one agent per data dir: a second one on the same dir is refused and names the first', async () => {
  const dir = tmpdir('tg-lock-');
  const agent = await startAgent(snapshot(), { dir });
  try {
    await assert.rejects(startAgent(snapshot(), { dir }), (e) => {
      assert.match(e.message, new RegExp(`data is in use by another tollgate-agent \\(pid ${agent.proc.child.pid}\\)`));
      return true;
    });
    // the first one still serves and spools
    const client = new OpenAI({ apiKey: KEY, baseURL: agent.base, maxRetries: 0 });
    await client.chat.completions.create({ model: 'gpt-4o', messages });
    assert.equal(agent.outbox().length, 1);
  } finally {
    await agent.stop();
  }
  // once it is gone, the dir is free again
  const again = await startAgent(null, { dir, noSnapshot: true });
  await again.stop();
});

// Fills a 1 MiB outbox map (some hundreds of records) with JSON requests or
// with streams, one at a time, until one answer's record is refused; then
// asks once more. Resolves { agent, ok, failed, next }; the caller stops the agent.
async function fillOutbox(stream) {
  const agent = await startAgent(snapshot(), { args: ['--outbox-map-mb', '1'] });
  const long = 'x'.repeat(250);
  const headers = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', 'user-agent': long,
    'x-tollgate-run': long };
  const ask = async () => {
    const r = await fetch(`${agent.base}/chat/completions`, { method: 'POST', headers,
      body: JSON.stringify({ model: 'gpt-4o', messages, stream }) });
    let text = '';
    let broken = false;
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        text += dec.decode(value, { stream: true });
      }
    } catch {
      broken = true; // the connection closed before the terminating chunk
    }
    return { status: r.status, text, broken, id: r.headers.get('x-request-id') };
  };
  const ok = [];
  let failed = null;
  try {
    for (let i = 0; i < 3000 && !failed; i++) {
      const a = await ask();
      if (a.status === 200 && !a.broken && !a.text.includes('"error"')) ok.push(a.id);
      else failed = a;
    }
    const upstream = (await mock.requests()).count;
    const next = await ask();
    return { agent, ok, failed, next, nextWentUpstream: (await mock.requests()).count !== upstream };
  } catch (e) {
    await agent.stop();
    throw e;
  }
}

// The failed answer's record is no longer a bill: it became a zero-cost
// receipt before its retry. Every answer that ended well has its record in
// the outbox, and only those. The next request is refused before the
// upstream call (the operator would pay the provider for an answer it must
// withhold) and leaves no record.
function assertWithheld({ agent, ok, failed, next, nextWentUpstream }) {
  assert.match(agent.proc.output(), /outbox commit failed \(\d+ records kept in memory, retried in 1 s\)/);
  assert.match(agent.proc.output(),
    new RegExp(`"request_id":"${failed.id}"[^\n]*answer withheld: its record stays as a zero-cost receipt|answer withheld: its record stays as a zero-cost receipt[^\n]*"request_id":"${failed.id}"`),
    `record of ${failed.id} withheld`);
  assert.equal(next.status, 503, next.text);
  assert.equal(JSON.parse(next.text).error.code, 'usage_outbox_full');
  assert.match(JSON.parse(next.text).error.message, /cannot record usage right now/);
  assert.equal(nextWentUpstream, false, 'no upstream call for a request refused early');
  assert.deepEqual(agent.outbox().map((h) => h.record.request_id), ok);
}

test('a record the outbox refuses fails its JSON answer: 503 usage_not_recorded; the next request is refused early', async () => {
  const r = await fillOutbox(false);
  try {
    assert.ok(r.failed, 'no JSON answer was failed');
    assert.equal(r.failed.status, 503, r.failed.text);
    assert.equal(JSON.parse(r.failed.text).error.code, 'usage_not_recorded');
    assert.match(JSON.parse(r.failed.text).error.message, /could not record this request's usage/);
    assertWithheld(r);
  } finally {
    await r.agent.stop();
  }
});

test('a record the outbox refuses fails its stream: an error event and no end; the next request is refused early', async () => {
  const r = await fillOutbox(true);
  try {
    assert.ok(r.failed, 'no stream was failed');
    assert.equal(r.failed.status, 200, r.failed.text);
    assert.ok(r.failed.broken, 'a failed stream must not end cleanly');
    assert.match(r.failed.text, /data: \{"error":\{"message":"The gateway could not record/);
    assert.doesNotMatch(r.failed.text, /data: \[DONE\]/);
    assertWithheld(r);
  } finally {
    await r.agent.stop();
  }
});

test('SIGTERM drains: a stream in flight finishes, its record is spooled, the agent exits 0', async () => {
  const dir = tmpdir('tg-drain-');
  const agent = await startAgent(snapshot(), { dir, args: ['--forward-header', 'x-mock-scenario'] });
  const client = new OpenAI({ apiKey: KEY, baseURL: agent.base, maxRetries: 0 });
  const { data, response } = await client.chat.completions.create({ model: 'gpt-4o', messages, stream: true },
    { headers: { 'x-mock-scenario': 'tokens=30;itl=40' } }).withResponse();
  let text = '';
  let signalled = false;
  for await (const c of data) {
    text += c.choices[0]?.delta?.content ?? '';
    if (!signalled && text) {
      agent.proc.child.kill('SIGTERM');
      signalled = true;
      // while the stream still runs, the listener is closed: no new connection is accepted
      await until(() => fetch(`${agent.url}/healthz`).then(() => false, () => true),
        { timeoutMs: 1000, what: 'the listener to close during the drain' });
      assert.equal(agent.proc.child.exitCode, null, 'the agent is still draining the stream');
    }
  }
  assert.equal(text, answerText(30));
  const exit = await agent.proc.exited;
  assert.equal(exit.code, 0);
  const held = dumpOutbox(path.join(dir, 'data'));
  assert.deepEqual(held.map((h) => h.record.request_id), [response.headers.get('x-request-id')]);
});
