// The steady load of bench/soak.sh: paced requests through the agent with
// the official openai SDK, a fixed mix per cycle of 10 requests:
//   4 streamed chat completions (include_usage), 4 plain chat completions,
//   1 chat request the upstream fails (x-mock-scenario status=500, forwarded
//     by the agent's --forward-header; the route's fallback fails too),
//   1 chat request for a model routed to a dead channel (connect refused).
// RATE requests/s in all, CONC in flight at most; no SDK retries. Every second
// it writes its counters to OUT (JSON, replaced atomically) so the sampler
// can read them; it stops on SIGTERM, or after SECONDS, and writes them once more.
//
//   node soak_load.mjs BASE_URL API_KEY RATE CONC SECONDS OUT
import { writeFileSync, renameSync } from 'node:fs';
import OpenAI from 'openai';

const [baseURL, apiKey, rateS, concS, secondsS, out] = process.argv.slice(2);
const rate = Number(rateS);
const conc = Number(concS);
const deadline = Date.now() + Number(secondsS) * 1000;
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 30_000 });
const MODEL = 'gpt-4o-mini';
const DEAD = 'gpt-dead';

const c = {
  sent: 0, stream_ok: 0, chat_ok: 0, fail_expected: 0, dead_expected: 0,
  unexpected: 0, last_unexpected: '',
};
let stopping = false;
let inflight = 0;

const msgs = (i) => [{ role: 'user', content: `Soak request ${i}: answer briefly.` }];

async function one(i) {
  const kind = i % 10;
  try {
    if (kind < 4) {
      const s = await client.chat.completions.create({
        model: MODEL, messages: msgs(i), stream: true, stream_options: { include_usage: true },
      });
      let usage = null;
      for await (const ch of s) if (ch.usage) usage = ch.usage;
      if (!usage) throw new Error('stream without usage');
      c.stream_ok++;
    } else if (kind < 8) {
      const r = await client.chat.completions.create({ model: MODEL, messages: msgs(i) });
      if (!r.usage) throw new Error('answer without usage');
      c.chat_ok++;
    } else if (kind === 8) {
      try {
        await client.chat.completions.create({ model: MODEL, messages: msgs(i) },
          { headers: { 'x-mock-scenario': 'status=500' } });
        throw new Error('a failing upstream answered 200');
      } catch (e) {
        if (!(e instanceof OpenAI.APIError) || !e.status || e.status < 500) throw e;
        c.fail_expected++;
      }
    } else {
      try {
        await client.chat.completions.create({ model: DEAD, messages: msgs(i) });
        throw new Error('a dead channel answered 200');
      } catch (e) {
        if (!(e instanceof OpenAI.APIError) || !e.status || e.status < 500) throw e;
        c.dead_expected++;
      }
    }
  } catch (e) {
    c.unexpected++;
    c.last_unexpected = String(e && e.message ? e.message : e).slice(0, 200);
  }
}

function dump() {
  writeFileSync(`${out}.tmp`, JSON.stringify(c));
  renameSync(`${out}.tmp`, out);
}

process.on('SIGTERM', () => { stopping = true; });
process.on('SIGINT', () => { stopping = true; });
const dumper = setInterval(dump, 1000);

const start = Date.now();
let i = 0;
while (!stopping && Date.now() < deadline) {
  // pace: request i is due at start + i / rate
  const due = start + (i * 1000) / rate;
  const wait = due - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, Math.min(wait, 200)));
  if (Date.now() < due) continue;
  if (inflight >= conc) { await new Promise((r) => setTimeout(r, 5)); continue; }
  inflight++;
  c.sent++;
  one(i).finally(() => { inflight--; });
  i++;
}
// bounded drain: the SDK's own timeout is 30 s
const end = Date.now() + 35_000;
while (inflight > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
clearInterval(dumper);
dump();
process.exit(0);
