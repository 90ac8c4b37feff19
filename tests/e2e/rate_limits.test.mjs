// Rate limits across agents (issue 16 item 4): a real tollgate-cp, three
// real tollgate-agents enrolled with it, mockllm upstream, the official
// openai and @anthropic-ai/sdk clients. A key's requests per minute hold
// across all three agents under a burst (docs/SPEND.md, "Rate limits": with
// every agent alive, no excess in a window); the OpenAI and Anthropic
// rate-limit headers say the limit, what is left and the reset; past the
// limit each protocol gets its own 429 with Retry-After; tokens are the
// request's estimate trued up to its usage; an agent that dies leaves its
// unused slice to the others within the lease TTL; and when the minute
// resets, requests pass again. A project's limit holds over all its keys.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startMock } from '../../tools/mockllm/mockllm.mjs';
import { startAgent, keyHash } from '../../agent/testing/agent.mjs';
import { startCp, seed, ENROLL_TOKEN } from './cp_agent_lib.mjs';
import { freePort, tmpdir, until } from './lib/proc.mjs';

const TTL_MS = 3000; // short lease TTL: a dead agent's slice lapses within the test
const MIN_US = 60000000;
const RPM = 12;
const messages = [{ role: 'user', content: 'Count me, please.' }];
const hdr = (h, name) => (typeof h?.get === 'function' ? h.get(name) : h?.[name]) ?? null;
const windowOf = (us) => Math.floor(Number(us) / MIN_US);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Go's duration, as OpenAI's reset headers: "250ms", "12s", "1.5s", "1m0s"
const goDuration = (s) => {
  const m = /^(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s|(\d+)ms)$/.exec(s);
  assert.ok(m, `reset "${s}" is a duration`);
  return (Number(m[1] || 0) * 60 + Number(m[2] || 0)) * 1000 + Number(m[3] || 0);
};

describe('rate limits across three agents', () => {
  let mock, cp, cpPort, acct;
  const agents = [];

  async function key(name, rate) {
    const k = await cp.adminCall('CreateKey', { key: { account_id: acct, name, rate_limit: rate } });
    for (const a of agents) {
      if (a.dead) continue;
      await until(async () => (await fetch(`${a.base}/models`, { headers: { authorization: `Bearer ${k.secret}` } })).status === 200,
        { timeoutMs: 10000, what: 'the key to reach the agent' });
    }
    return { id: k.key.id, secret: k.secret };
  }

  // the usage records of a key on every agent: [{ agent, record }]
  const recordsOf = (keyId) => agents.flatMap((a, i) => a.records().filter((r) => r.key_id === keyId).map((r) => ({ agent: i, r })));

  // Waits, if needed, so that at least `need` ms of the current UTC minute are left.
  async function roomInMinute(need) {
    const left = MIN_US / 1000 - (Date.now() % (MIN_US / 1000));
    if (left < need) await sleep(left + 50);
  }

  before(async () => {
    mock = await startMock();
    cpPort = await freePort();
    cp = await startCp({ dataDir: tmpdir('tg-rate-cp-'),
      extraArgs: ['--listen', `127.0.0.1:${cpPort}`, '--lease-ttl-ms', String(TTL_MS)] });
    const ids = await seed(cp, { topup: 1000n * 1000000000n });
    acct = ids.account;
    const ch = await cp.adminCall('CreateChannel', { channel: {
      name: 'mock', provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`,
      route_type: 'ROUTE_TYPE_POOLED', credential: 'sk-upstream-mock' } });
    await cp.adminCall('PutRoute', { route: { model: 'gpt-4o', tiers: [{ targets: [{ channel_id: ch.id }] }] } });
    for (let i = 0; i < 3; i++) {
      const a = await startAgent(null, { noSnapshot: true,
        args: ['--cp', `127.0.0.1:${cpPort}`, '--enroll-token', ENROLL_TOKEN] });
      await until(async () => (await fetch(`${a.url}/readyz`)).status === 200,
        { timeoutMs: 15000, what: 'the agent to receive its snapshot over Sync' });
      agents.push(a);
    }
  });

  after(async () => {
    for (const a of agents) if (!a.dead) await a.stop();
    await cp?.stop();
    await mock?.stop();
  });

  test('negative limits are refused with a status naming the field', async () => {
    await assert.rejects(cp.adminCall('CreateKey', { key: { account_id: acct, name: 'neg', rate_limit: { requests_per_minute: '-1' } } }),
      (e) => e.code === 3 && /key\.rate_limit\.requests_per_minute/.test(e.details ?? e.message));
    await assert.rejects(cp.adminCall('CreateKey', { key: { account_id: acct, name: 'neg', rate_limit: { tokens_per_minute: '-5' } } }),
      (e) => e.code === 3 && /key\.rate_limit\.tokens_per_minute/.test(e.details ?? e.message));
  });

  test('a project\'s requests per minute hold across its two keys and the three agents; the 429 names the project', async () => {
    const PRPM = 8;
    await roomInMinute(15000);
    const prj = await cp.adminCall('CreateProject', { project: { account_id: acct, name: 'rl-project',
      rate_limit: { requests_per_minute: String(PRPM) } } });
    // two keys of the project, one with a looser limit of its own: the
    // project's is the one they meet
    const keys = [];
    for (const [name, rate] of [['p-a', undefined], ['p-b', { requests_per_minute: '100' }]]) {
      const k = await cp.adminCall('CreateKey', { key: { account_id: acct, project_id: prj.id, name, rate_limit: rate } });
      for (const a of agents) {
        await until(async () => (await fetch(`${a.base}/models`, { headers: { authorization: `Bearer ${k.secret}` } })).status === 200,
          { timeoutMs: 10000, what: 'the key to reach the agent' });
      }
      keys.push({ id: k.key.id, secret: k.secret });
    }
    const N = 24;
    const results = await Promise.all(Array.from({ length: N }, (_, i) => {
      const c = new OpenAI({ apiKey: keys[i % 2].secret, baseURL: agents[i % 3].base, maxRetries: 0, timeout: 20000 });
      return c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).withResponse()
        .then(({ response }) => ({ ok: true, h: response.headers, key: i % 2 }), (e) => ({ ok: false, e }));
    }));
    const served = results.filter((r) => r.ok);
    const refused = results.filter((r) => !r.ok);
    // both keys together: what one window admits never passes the project's limit
    const okRecords = () => keys.flatMap((k) => recordsOf(k.id)).filter(({ r }) => r.client_status === 200);
    await until(() => okRecords().length >= served.length, { timeoutMs: 10000, what: 'a record of every served request' });
    const perWindow = new Map();
    for (const { r } of okRecords()) {
      assert.equal(r.project_id, prj.id);
      perWindow.set(windowOf(r.rate_window_start_us), (perWindow.get(windowOf(r.rate_window_start_us)) || 0) + 1);
    }
    for (const [w, n] of perWindow) assert.ok(n <= PRPM, `window ${w} admitted ${n} > ${PRPM} for the project`);
    assert.equal([...perWindow.values()].reduce((a, b) => a + b, 0), served.length);
    assert.ok(refused.length >= N - PRPM * perWindow.size, `${refused.length} refused`);
    assert.ok(refused.length > 0);
    for (const { e } of refused) {
      assert.equal(e.status, 429, `${e.status} ${e.message}`);
      assert.equal(e.code, 'rate_limit_exceeded');
      assert.match(e.message, new RegExp(`Rate limit reached for this API key's project on requests per minute \\(RPM\\): limit ${PRPM}`));
      const ra = Number(hdr(e.headers, 'retry-after'));
      assert.ok(ra >= 1 && ra <= 60, `Retry-After ${ra}`);
    }
    // the headers report the limit the key meets first: the project's
    for (const { h } of served) {
      assert.equal(h.get('x-ratelimit-limit-requests'), String(PRPM));
      const left = Number(h.get('x-ratelimit-remaining-requests'));
      assert.ok(Number.isInteger(left) && left >= 0 && left <= PRPM - 1, `remaining ${left}`);
    }
    // the key's own view lists both limits, each with its scope
    const view = await (await fetch(`${agents[0].url}/v1/tollgate/key`, { headers: { authorization: `Bearer ${keys[1].secret}` } })).json();
    const mine = view.rate_limits.filter((x) => x.limit_type === 'requests_per_minute');
    assert.deepEqual(mine.map((x) => [x.scope, x.limit]).sort(), [['key', 100], ['project', PRPM]]);
    assert.match(mine.find((x) => x.scope === 'project').scope_id, new RegExp(`^project/${prj.id}/rpm/\\d+$`));
  });

  test(`a burst over three agents stays within ${RPM} requests per minute; headers, 429s in both protocols, a dead agent's slice, the reset`, async () => {
    await roomInMinute(15000); // the burst and the 429s in one window (the bound is asserted per window anyway)
    const k = await key('burst', { requests_per_minute: String(RPM), tokens_per_minute: '1000000' });
    const oai = agents.map((a) => new OpenAI({ apiKey: k.secret, baseURL: a.base, maxRetries: 0, timeout: 20000 }));
    const results = await Promise.all(Array.from({ length: 36 }, (_, i) =>
      oai[i % 3].chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).withResponse()
        .then(({ response }) => ({ ok: true, h: response.headers }), (e) => ({ ok: false, e }))));
    const served = results.filter((r) => r.ok);
    const refused = results.filter((r) => !r.ok);
    // the bound (docs/SPEND.md): with every agent alive, what one window
    // admits never passes the limit, whichever agents served it (a
    // record names the minute it was admitted in)
    const okRecords = () => recordsOf(k.id).filter(({ r }) => r.client_status === 200);
    await until(() => okRecords().length >= served.length, { timeoutMs: 10000, what: 'a record of every served request' });
    const perWindow = new Map();
    for (const { r } of okRecords()) {
      assert.ok(Number(r.rate_window_start_us) > 0 && Number(r.rate_window_start_us) % MIN_US === 0);
      perWindow.set(windowOf(r.rate_window_start_us), (perWindow.get(windowOf(r.rate_window_start_us)) || 0) + 1);
    }
    for (const [w, n] of perWindow) assert.ok(n <= RPM, `window ${w} admitted ${n} > ${RPM}`);
    // every served request is one record, counted in its window; 36 > 2 x RPM,
    // so some were refused whichever windows the burst fell in
    assert.equal([...perWindow.values()].reduce((a, b) => a + b, 0), served.length);
    assert.ok(served.length >= 1 && served.length <= RPM * perWindow.size, `${served.length} served`);
    assert.ok(refused.length > 0, 'the burst past the limit was refused in part');
    assert.equal(refused.length, 36 - served.length);
    assert.ok(refused.length >= 36 - RPM * perWindow.size);
    // OpenAI's headers on every answer: the limit, what is left (never
    // more than the limit less what this agent itself saw admitted), the
    // time to the minute's end
    for (const { h } of served) {
      assert.equal(h.get('x-ratelimit-limit-requests'), String(RPM));
      assert.equal(h.get('x-ratelimit-limit-tokens'), '1000000');
      const left = Number(h.get('x-ratelimit-remaining-requests'));
      assert.ok(Number.isInteger(left) && left >= 0 && left <= RPM - 1, `remaining ${left}`);
      const tl = Number(h.get('x-ratelimit-remaining-tokens'));
      assert.ok(tl >= 0 && tl < 1000000);
      const reset = goDuration(h.get('x-ratelimit-reset-requests'));
      assert.ok(reset > 0 && reset <= 60000, `reset ${reset} ms`);
      assert.equal(h.get('x-ratelimit-reset-tokens') !== null, true);
    }
    // past the limit: OpenAI's 429 shape, with Retry-After to the window's end
    for (const { e } of refused) {
      assert.equal(e.status, 429, `${e.status} ${e.message}`);
      assert.equal(e.code, 'rate_limit_exceeded');
      assert.equal(e.type, 'requests');
      assert.match(e.message, /requests per minute \(RPM\): limit 12/);
      const ra = Number(hdr(e.headers, 'retry-after'));
      assert.ok(ra >= 1 && ra <= 60, `Retry-After ${ra}`);
      assert.equal(hdr(e.headers, 'x-ratelimit-remaining-requests'), '0');
    }
    // every refusal has its zero-cost receipt (429, nothing sent upstream)
    const recs = recordsOf(k.id);
    assert.equal(recs.filter(({ r }) => r.client_status === 429).length, refused.length);
    assert.ok(recs.filter(({ r }) => r.client_status === 429).every(({ r }) => !r.attempts?.length && !BigInt(r.cost_nano || 0)));

    // an Anthropic client on the same exhausted key: Anthropic's shape and headers
    const endUs = (windowOf(Date.now() * 1000) + 1) * MIN_US;
    const ant = new Anthropic({ apiKey: k.secret, baseURL: agents[1].url, maxRetries: 0 });
    const err = await ant.messages.create({ model: 'gpt-4o', max_tokens: 16, messages }).then(() => null, (e) => e);
    assert.ok(err, 'refused');
    assert.equal(err.status, 429);
    assert.equal(err.error?.error?.type, 'rate_limit_error');
    assert.match(err.error?.error?.message, /requests per minute/);
    assert.ok(Number(hdr(err.headers, 'retry-after')) >= 1);
    assert.equal(hdr(err.headers, 'anthropic-ratelimit-requests-limit'), String(RPM));
    assert.equal(hdr(err.headers, 'anthropic-ratelimit-requests-remaining'), '0');
    assert.equal(hdr(err.headers, 'anthropic-ratelimit-requests-reset'), new Date(endUs / 1000).toISOString().replace('.000Z', 'Z'));
    assert.equal(hdr(err.headers, 'anthropic-ratelimit-tokens-limit'), '1000000');
    assert.equal(hdr(err.headers, 'x-ratelimit-limit-requests'), null, 'no OpenAI headers to an Anthropic client');

    // the key holder's view shows the same limit, nothing left, the reset
    const view = await (await fetch(`${agents[2].url}/v1/tollgate/key`, { headers: { authorization: `Bearer ${k.secret}` } })).json();
    const rl = view.rate_limits.find((x) => x.limit_type === 'requests_per_minute');
    assert.equal(rl.limit, RPM);
    assert.equal(rl.remaining, 0);
    assert.equal(rl.resets_at, new Date(endUs / 1000).toISOString().replace('.000Z', 'Z'));

    // an agent that dies holding a slice: within the TTL the others can
    // admit everything it did not use (a fresh key: its own windows)
    await roomInMinute(12000);
    const k2 = await key('slices', { requests_per_minute: String(RPM) });
    const c0 = new OpenAI({ apiKey: k2.secret, baseURL: agents[0].base, maxRetries: 0 });
    const { response: r0 } = await c0.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).withResponse();
    const w2 = windowOf((await agents[0].waitRecord(r0.headers.get('x-request-id'))).rate_window_start_us);
    await agents[0].proc.stop('SIGKILL');
    agents[0].dead = true;
    await sleep(TTL_MS + 300);
    let more = 0;
    const c12 = [1, 2].map((i) => new OpenAI({ apiKey: k2.secret, baseURL: agents[i].base, maxRetries: 0 }));
    for (let i = 0; i < 2 * RPM; i++) {
      const ok = await c12[i % 2].chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).then(() => true, () => false);
      if (ok) more++;
    }
    const inW2 = recordsOf(k2.id).filter(({ r }) => r.client_status === 200 && windowOf(r.rate_window_start_us) === w2);
    const dead = inW2.filter(({ agent }) => agent === 0).length;
    const others = inW2.length - dead;
    assert.equal(dead, 1);
    // the others got everything the dead agent did not use; the bound: at
    // most what it admitted after its last lease exchange comes on top
    // (here its one request: it was killed before renewing)
    assert.ok(others >= RPM - dead, `the others admitted ${others}: the dead agent's slice came back`);
    assert.ok(inW2.length <= RPM + dead, `${inW2.length} admitted in the window`);
    assert.ok(more >= others);

    // the window resets: the first key's requests pass again
    const wait = endUs / 1000 - Date.now();
    if (wait > 0) await sleep(wait + 200);
    const { response } = await oai[1].chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).withResponse();
    assert.equal(response.headers.get('x-ratelimit-limit-requests'), String(RPM));
    assert.ok(Number(response.headers.get('x-ratelimit-remaining-requests')) >= RPM - 2);
    // and an Anthropic client served in the new window: Anthropic's headers, the reset a minute later
    const { response: ar } = await ant.messages.create({ model: 'gpt-4o', max_tokens: 16, messages }).withResponse();
    const next = new Date((windowOf(Date.now() * 1000) + 1) * MIN_US / 1000).toISOString().replace('.000Z', 'Z');
    assert.equal(ar.headers.get('anthropic-ratelimit-requests-limit'), String(RPM));
    const aleft = Number(ar.headers.get('anthropic-ratelimit-requests-remaining'));
    assert.ok(aleft >= 0 && aleft <= RPM - 2, `remaining ${aleft}`);
    assert.equal(ar.headers.get('anthropic-ratelimit-requests-reset'), next);
    assert.equal(ar.headers.get('anthropic-ratelimit-tokens-reset'), next);
    assert.ok(Number(ar.headers.get('anthropic-ratelimit-tokens-remaining')) < 1000000);
    assert.equal(ar.headers.get('x-ratelimit-limit-requests'), null);
  });

  test('tokens: a request too large for the minute is refused; usage replaces the estimate', async () => {
    const TPM = 3000;
    const k = await key('tokens', { tokens_per_minute: String(TPM) });
    const a = agents[2];
    const c = new OpenAI({ apiKey: k.secret, baseURL: a.base, maxRetries: 0 });
    const big = await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 5000 }).then(() => null, (e) => e);
    assert.equal(big.status, 429);
    assert.equal(big.code, 'rate_limit_exceeded');
    assert.equal(big.type, 'tokens');
    assert.match(big.message, /Request too large/);
    assert.equal(hdr(big.headers, 'retry-after'), null, 'waiting would not help');
    await roomInMinute(5000);
    const { response } = await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 200 }).withResponse();
    const rec = await a.waitRecord(response.headers.get('x-request-id'));
    const u = rec.usage;
    const used = ['input_tokens', 'output_tokens', 'cache_read_tokens', 'cache_write_tokens'].reduce((s, f) => s + Number(u[f] || 0), 0);
    assert.ok(used > 0 && used < 200);
    // while it ran, the estimate (prompt bytes + 200) was held: the header says so
    const during = Number(response.headers.get('x-ratelimit-remaining-tokens'));
    assert.ok(during <= TPM - 200, `remaining ${during} while the estimate was held`);
    // once it ended, only its usage counts (this agent alone used the key)
    await until(async () => {
      const v = await (await fetch(`${a.url}/v1/tollgate/key`, { headers: { authorization: `Bearer ${k.secret}` } })).json();
      const t = v.rate_limits.find((x) => x.limit_type === 'tokens_per_minute');
      return t.remaining === TPM - used || (windowOf(Date.now() * 1000) !== windowOf(rec.rate_window_start_us) && t.remaining === TPM);
    }, { timeoutMs: 5000, what: `remaining tokens ${TPM} - ${used}` });
  });
});

// One agent on a snapshot (its own authority: no control plane), a key with
// 3 requests per minute in a project with 1: the project refuses the second
// and third requests after the key's window reserved them, and the key's
// window gets them back (its view says 2 left, not 0).
test('a request the project refuses gives back what the key\'s window reserved for it', async () => {
  const mock = await startMock();
  const KEY = 'sk-tg-project-rate';
  let agent;
  try {
    agent = await startAgent({
      revision: '1',
      accounts: [{ id: 'acct', name: 'a', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' }],
      balances: [{ account_id: 'acct', bucket: 'credit', currency: 'USD', balance_nano: '1000000000000' }],
      projects: [{ id: 'prj', account_id: 'acct', name: 'p', status: 'OBJECT_STATUS_ACTIVE',
        rate_limit: { requests_per_minute: '1' } }],
      keys: [{ id: 'k1', account_id: 'acct', project_id: 'prj', secret_sha256: keyHash(KEY), status: 'KEY_STATUS_ACTIVE',
        rate_limit: { requests_per_minute: '3' } }],
      channels: [{ id: 'ch', name: 'ch', provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`,
        credential: 'sk-upstream-rate', route_type: 'ROUTE_TYPE_DIRECT' }],
      routes: [{ model: 'gpt-4o', tiers: [{ targets: [{ channel_id: 'ch' }] }] }],
      price_cards: [{ id: 'card', version: '1', effective_at_us: '0', currency: 'USD',
        entries: [{ model: 'gpt-4o', input_per_mtok_nano: '1000000000', output_per_mtok_nano: '1000000000' }] }],
    });
    // the three requests and the view in one minute
    const left = MIN_US / 1000 - (Date.now() % (MIN_US / 1000));
    if (left < 10000) await sleep(left + 50);
    const client = new OpenAI({ apiKey: KEY, baseURL: agent.base, maxRetries: 0 });
    await client.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 8 });
    for (let i = 0; i < 2; i++) {
      await assert.rejects(client.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 8 }),
        (e) => e.status === 429 && /for this API key's project on requests per minute \(RPM\): limit 1,/.test(e.message));
    }
    const view = await (await fetch(`${agent.url}/v1/tollgate/key`, { headers: { authorization: `Bearer ${KEY}` } })).json();
    const rpm = (scope) => view.rate_limits.find((x) => x.limit_type === 'requests_per_minute' && x.scope === scope);
    assert.equal(rpm('project').remaining, 0);
    assert.equal(rpm('key').remaining, 2, 'the two refused requests are not counted on the key');
    assert.equal((await mock.requests()).count, 1, 'the refused requests never went upstream');
  } finally {
    await agent?.stop();
    await mock.stop();
  }
});
