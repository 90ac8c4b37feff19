// Conversion cost (issue 13, Measure): the agent's CPU per request and per
// stream event, passthrough against converted, in one run against one
// mockllm: for each client protocol (OpenAI chat, Anthropic Messages, the
// Responses API) a channel of the same protocol (passthrough; Anthropic's is
// checked and metered through proto/ with the upstream's bytes passed) and
// one of the other (converted through the IR), JSON answers and streams.
//
// CPU is the agent's, summed over its threads from
// /proc/PID/task/*/schedstat (nanoseconds on CPU, not 10 ms ticks), over
// N requests sent K at a time with keep-alive. Per request: a JSON answer of
// 16 tokens. Per stream event: (CPU of a 257-token stream - CPU of a
// 1-token stream) / 256, so the fixed per-request part cancels out. Every
// answer is checked (status 200, the stream complete). Prints a markdown
// table with ratios to the passthrough row of the same client protocol.
//   TG_BIN=$(bazel info bazel-bin) node bench/proto/bench.mjs [N] [K]
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { startMock } from '../../tools/mockllm/mockllm.mjs';
import { startAgent, keyHash } from '../../agent/testing/agent.mjs';

const N = Number(process.argv[2] || 2000);
const K = Number(process.argv[3] || 4);
const LONG = 257;
const KEY = 'sk-tg-bench-proto';

const chans = [];
const routes = [];
for (const [prov, name] of [['PROVIDER_TYPE_OPENAI', 'oai'], ['PROVIDER_TYPE_ANTHROPIC', 'anth'], ['PROVIDER_TYPE_DEEPSEEK', 'chat']]) {
  for (const [tag, scn] of [['json', 'tokens=16'], ['s1', 'tokens=1'], ['sl', `tokens=${LONG}`]]) {
    chans.push({ id: `${name}-${tag}`, prov, scn });
    routes.push({ model: `${name}-${tag}`, tiers: [{ targets: [{ channel_id: `${name}-${tag}` }] }] });
  }
}

function cpuNs(pid) {
  let ns = 0n;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    ns += BigInt(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
  }
  return ns;
}

const mock = await startMock();
const agent = await startAgent({
  revision: '1',
  accounts: [{ id: 'acct', name: 'bench', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' }],
  balances: [{ account_id: 'acct', bucket: 'credit', currency: 'USD', balance_nano: '1000000000000000' }],
  keys: [{ id: 'k', account_id: 'acct', secret_sha256: keyHash(KEY), display_prefix: KEY.slice(0, 9), status: 'KEY_STATUS_ACTIVE' }],
  channels: chans.map((c) => ({ id: c.id, name: c.id, provider: c.prov, base_url: `${mock.url}/v1`, credential: 'up',
    route_type: 'ROUTE_TYPE_DIRECT', status: 'OBJECT_STATUS_ACTIVE', extra_headers: [{ name: 'x-mock-scenario', value: c.scn }] })),
  routes,
  price_cards: [{ id: 'card', version: '1', effective_at_us: '1', currency: 'USD',
    entries: [{ model: '*', input_per_mtok_nano: '1000000000', output_per_mtok_nano: '2000000000' }] }],
});
const pid = agent.proc.child.pid;

const CLIENTS = {
  openai: { path: '/v1/chat/completions', headers: { authorization: `Bearer ${KEY}` },
    body: (model, stream) => ({ model, stream, messages: [{ role: 'user', content: 'Hello there, how are you today?' }],
      ...(stream ? { stream_options: { include_usage: true } } : {}) }),
    end: (t) => t.includes('data: [DONE]') },
  anthropic: { path: '/v1/messages', headers: { 'x-api-key': KEY, 'anthropic-version': '2023-06-01' },
    body: (model, stream) => ({ model, stream, max_tokens: 1000, messages: [{ role: 'user', content: 'Hello there, how are you today?' }] }),
    end: (t) => t.includes('event: message_stop') },
  responses: { path: '/v1/responses', headers: { authorization: `Bearer ${KEY}` },
    body: (model, stream) => ({ model, stream, input: 'Hello there, how are you today?' }),
    end: (t) => t.includes('response.completed') },
};

async function one(client, model, stream) {
  const c = CLIENTS[client];
  const r = await fetch(`${agent.url}${c.path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...c.headers },
    body: JSON.stringify(c.body(model, stream)) });
  const t = await r.text();
  if (r.status !== 200 || (stream && !c.end(t))) throw new Error(`${client} ${model}: HTTP ${r.status} ${t.slice(0, 300)}`);
}

async function run(client, model, stream, n) {
  for (let i = 0; i < 20; i++) await one(client, model, stream); // warm: connections, curl handles
  const before = cpuNs(pid);
  let next = 0;
  await Promise.all(Array.from({ length: K }, async () => { while (next++ < n) await one(client, model, stream); }));
  return Number(cpuNs(pid) - before) / n / 1000; // us per request
}

const PAIRS = [
  ['openai', 'oai', 'passthrough (sse.c)'],
  ['openai', 'anth', 'converted to Anthropic'],
  ['anthropic', 'anth', 'passthrough (proto/, checked)'],
  ['anthropic', 'oai', 'converted to OpenAI chat'],
  ['responses', 'oai', 'passthrough (sse.c)'],
  ['responses', 'chat', 'converted to chat (DeepSeek channel)'],
];
const rows = [];
for (const [client, chan, how] of PAIRS) {
  const json = await run(client, `${chan}-json`, false, N);
  const s1 = await run(client, `${chan}-s1`, true, N);
  const sl = await run(client, `${chan}-sl`, true, Math.max(50, Math.floor(N / 8)));
  rows.push({ client, chan, how, json, s1, ev: (sl - s1) / (LONG - 1) });
}
await agent.stop();
await mock.stop();

const f = (x) => x.toFixed(1);
const f2 = (x) => x.toFixed(2);
console.log(`agent CPU, N=${N} requests per row (streams of ${LONG} tokens: N/8), ${K} at a time; load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
console.log('');
console.log('| client | channel | path | us/request (JSON) | x | us/request (1-token stream) | x | us/stream event | x |');
console.log('|---|---|---|---:|---:|---:|---:|---:|---:|');
for (const r of rows) {
  const base = rows.find((b) => b.client === r.client);
  console.log(`| ${r.client} | ${r.chan} | ${r.how} | ${f(r.json)} | ${f2(r.json / base.json)} | ${f(r.s1)} | ${f2(r.s1 / base.s1)} | ${f2(r.ev)} | ${f2(r.ev / base.ev)} |`);
}
