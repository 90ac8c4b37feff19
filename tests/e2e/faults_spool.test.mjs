// The agent's spool disk full (issue 17, item 2): its data dir on a 4 MiB
// tmpfs that a filler file then fills to the last byte. Answers whose
// record cannot be written are withheld (503 usage_not_recorded, a clear
// message) and their records become zero-cost receipts kept in memory; when
// the space comes back the agent writes them and serves again. Meanwhile
// new requests are refused before the upstream call (503 usage_outbox_full). Nothing is
// lost, nothing is recorded twice, and no withheld answer is charged.
// Needs `mount -t tmpfs` (root, as CI runs); skipped with the reason where
// the kernel refuses it. (A full LMDB map, the other way the outbox fills,
// is agent_outbox's test.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { startMock } from '../../tools/mockllm/mockllm.mjs';
import { startAgent, keyHash } from '../../agent/testing/agent.mjs';
import { tmpdir, until } from './lib/proc.mjs';
import { mountTmpfs, umountTmpfs, fill } from './lib/tmpfs.mjs';

const KEY = 'sk-tg-spool-full';

function snapshot(mock) {
  return {
    revision: '1',
    accounts: [{ id: 'acct', name: 'a', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' }],
    balances: [{ account_id: 'acct', bucket: 'credit', currency: 'USD', balance_nano: '1000000000000' }],
    keys: [{ id: 'k1', account_id: 'acct', secret_sha256: keyHash(KEY), status: 'KEY_STATUS_ACTIVE' }],
    channels: [{ id: 'ch', name: 'ch', provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`,
      credential: 'sk-upstream-spool', route_type: 'ROUTE_TYPE_DIRECT' }],
    routes: [{ model: 'gpt-4o', tiers: [{ targets: [{ channel_id: 'ch' }] }] }],
    price_cards: [{ id: 'card', version: '1', effective_at_us: '0', currency: 'USD',
      entries: [{ model: 'gpt-4o', input_per_mtok_nano: '1000000000', output_per_mtok_nano: '1000000000' }] }],
  };
}

test('spool disk full: 503 usage_not_recorded and a clear log line; space back: every record written once', async (t) => {
  const mnt = tmpdir('tg-spool-');
  const why = mountTmpfs(mnt, '4m');
  if (why) { t.skip(why); return; }
  const mock = await startMock();
  let agent;
  try {
    const dir = path.join(mnt, 'agent');
    mkdirSync(dir);
    agent = await startAgent(snapshot(mock), { dir });
    const ask = async () => {
      const r = await fetch(`${agent.base}/chat/completions`, { method: 'POST',
        headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', 'user-agent': 'u'.repeat(400) },
        body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'spool me' }] }) });
      return { status: r.status, body: await r.text(), id: r.headers.get('x-request-id') };
    };
    const ok = [];
    for (let i = 0; i < 3; i++) {
      const a = await ask();
      assert.equal(a.status, 200, a.body);
      ok.push(a.id);
    }
    const filler = fill(mnt);
    // the outbox's file grows page by page: within some requests one needs a page there is no room for
    let refused = null;
    for (let i = 0; i < 400 && !refused; i++) {
      const a = await ask();
      if (a.status === 200) ok.push(a.id);
      else if (a.status === 503) refused = a;
      else assert.fail(`unexpected ${a.status}: ${a.body}`);
    }
    assert.ok(refused, 'no answer was withheld on a full disk');
    const err = JSON.parse(refused.body).error;
    assert.equal(err.code, 'usage_not_recorded');
    assert.match(err.message, /could not record this request's usage/);
    assert.match(agent.proc.output(),
      /outbox commit failed \(\d+ records kept in memory, retried in 1 s\): outbox journal: No space left on device/,
      'the log says what happened and why');

    // while the outbox cannot be written, a request is refused before the
    // upstream call: the operator does not pay the provider for an answer
    // that would be withheld
    const before = (await mock.requests()).count;
    const early = await ask();
    assert.equal(early.status, 503, early.body);
    const eerr = JSON.parse(early.body).error;
    assert.equal(eerr.code, 'usage_outbox_full');
    assert.match(eerr.message, /cannot record usage right now/);
    assert.equal((await mock.requests()).count, before, 'no upstream call for a request refused early');

    // space back: the withheld records are written, the agent serves again
    rmSync(filler);
    const back = await until(async () => {
      const a = await ask();
      return a.status === 200 ? a : null;
    }, { timeoutMs: 10000, what: 'the agent to serve again once space returned' });
    ok.push(back.id);
    const held = await until(() => {
      const h = agent.outbox();
      return h.some((x) => x.record.request_id === refused.id) ? h : null;
    }, { timeoutMs: 10000, what: 'the withheld record to be written' });
    const seen = held.map((h) => h.record.request_id);
    assert.equal(new Set(seen).size, seen.length, 'no record twice');
    for (const id of ok) assert.ok(seen.includes(id), `record of ${id} kept`);
    for (const h of held.filter((x) => !ok.includes(x.record.request_id))) {
      assert.equal(BigInt(h.record.cost_nano || 0), 0n, `withheld answer ${h.record.request_id} is not charged`);
    }
  } finally {
    try {
      await agent?.stop();
      await mock.stop();
    } finally {
      umountTmpfs(mnt); // even when a stop threw
    }
  }
});
