// Streaming measurements wrk cannot make, for bench/run.sh. Two modes, each
// printing one line "BENCH key=value ..." and exiting non-zero on any error:
//
//   node stream_client.mjs latency URL N CONC SCENARIO
//     N streaming chat completions, CONC at a time over keep-alive
//     connections; for each, TTFT (request start to the first body byte,
//     which carries the first token) and total time (to the end of a stream
//     that must contain "data: [DONE]"). Prints p50/p99 of both in us.
//
//   node stream_client.mjs idle URL M PIDS
//     opens M streams whose first token never comes (scenario ttft=600000:
//     the response head arrives, then nothing), waits until every head has
//     arrived, then reads VmRSS of the comma-separated PIDS (the process(es)
//     under test) and prints the RSS growth per open stream in bytes. Opens
//     them WINDOW at a time, within 30 s + 5 ms a stream. One process holds
//     all M sockets: M is bounded by its open-files limit (Node raises the
//     soft limit to the hard one).
//
// Bounded: every wait has a deadline; sockets are destroyed on exit.
import http from 'node:http';
import { readFileSync } from 'node:fs';

const BODY = JSON.stringify({
  model: 'gpt-4o-mini', stream: true, stream_options: { include_usage: true },
  messages: [{ role: 'user', content: 'Stream a short answer for the benchmark.' }],
});

// A gateway that needs more (a peer's routing headers) gets them from
// BENCH_HEADERS (a JSON object); a URL with a path serves OpenAI below it.
const EXTRA = JSON.parse(process.env.BENCH_HEADERS || '{}');

function post(url, scenario, agent) {
  const u = new URL(`${new URL(url).pathname.replace(/\/$/, '')}/v1/chat/completions`, url);
  return http.request({
    host: u.hostname, port: u.port, path: u.pathname, method: 'POST', agent,
    headers: {
      ...EXTRA, 'content-type': 'application/json', authorization: 'Bearer sk-bench',
      'content-length': Buffer.byteLength(BODY), 'x-mock-scenario': scenario,
    },
  });
}

function pct(a, p) {
  const s = [...a].sort((x, y) => x - y);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : NaN;
}

function oneStream(url, scenario, agent) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    let ttft = null;
    let tail = '';
    const req = post(url, scenario, agent);
    const timer = setTimeout(() => { req.destroy(new Error('stream timed out after 30 s')); }, 30000);
    req.on('response', (res) => {
      if (res.statusCode !== 200) { clearTimeout(timer); res.resume(); reject(new Error(`HTTP ${res.statusCode}`)); return; }
      res.on('data', (d) => {
        if (ttft === null) ttft = Number(process.hrtime.bigint() - t0) / 1000;
        tail = (tail + d.toString()).slice(-64);
      });
      res.on('end', () => {
        clearTimeout(timer);
        const total = Number(process.hrtime.bigint() - t0) / 1000;
        if (!tail.includes('data: [DONE]')) reject(new Error('stream ended without [DONE]'));
        else resolve({ ttft, total });
      });
      res.on('error', (e) => { clearTimeout(timer); reject(e); });
    });
    req.on('error', (e) => { clearTimeout(timer); reject(e); });
    req.end(BODY);
  });
}

async function latency(url, n, conc, scenario) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: conc });
  const ttfts = [];
  const totals = [];
  let next = 0;
  const t0 = Date.now();
  const worker = async () => {
    while (next < n) {
      next++;
      const r = await oneStream(url, scenario, agent);
      ttfts.push(r.ttft);
      totals.push(r.total);
    }
  };
  await Promise.all(Array.from({ length: conc }, worker));
  agent.destroy();
  const secs = (Date.now() - t0) / 1000;
  console.log(`BENCH streams=${n} rps=${(n / secs).toFixed(1)} ttft_p50_us=${pct(ttfts, 50).toFixed(0)} ` +
    `ttft_p99_us=${pct(ttfts, 99).toFixed(0)} total_p50_us=${pct(totals, 50).toFixed(0)} total_p99_us=${pct(totals, 99).toFixed(0)}`);
}

function rss(pids) {
  let sum = 0;
  for (const pid of pids) {
    const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+) kB/m);
    if (!m) throw new Error(`no VmRSS for pid ${pid}`);
    sum += Number(m[1]) * 1024;
  }
  return sum;
}

// Streams are opened WINDOW at a time (a new one as each head arrives), so
// no listen backlog (nginx's default 511, the agent's 1024) overflows into
// SYN retransmits; the whole opening must end within 30 s + 5 ms a stream.
const WINDOW = 256;

async function idle(url, m, pids) {
  const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
  const reqs = [];
  const before = rss(pids);
  const t0 = Date.now();
  let heads = 0;
  let sent = 0;
  let ended = 0;
  const all = new Promise((resolve, reject) => {
    const limit = 30000 + 5 * m;
    const fail = (e) => {
      clearTimeout(deadline);
      reject(new Error(`${e.message} with ${heads}/${m} stream heads in (${sent} sent)`));
    };
    const deadline = setTimeout(() => fail(new Error(`timed out after ${limit / 1000} s`)), limit);
    const open = () => {
      const req = post(url, 'ttft=600000', agent);
      sent++;
      req.on('response', (res) => {
        if (res.statusCode !== 200) { res.resume(); fail(new Error(`HTTP ${res.statusCode}`)); return; }
        res.on('data', () => {});
        res.on('end', () => { ended++; });
        if (++heads === m) { clearTimeout(deadline); resolve(); } else if (sent < m) open();
      });
      req.on('error', (e) => { if (heads < m) fail(e); });
      req.end(BODY);
      reqs.push(req);
    };
    for (let i = 0; i < Math.min(WINDOW, m); i++) open();
  });
  try {
    await all;
    const openSecs = (Date.now() - t0) / 1000;
    await new Promise((r) => setTimeout(r, 500)); // let the servers settle
    const after = rss(pids);
    if (ended) throw new Error(`${ended} of ${m} streams ended early: the target must pass x-mock-scenario (ttft=600000) to mockllm`);
    console.log(`BENCH streams=${m} open_s=${openSecs.toFixed(1)} rss_before=${before} rss_after=${after} ` +
      `bytes_per_stream=${((after - before) / m).toFixed(0)}`);
  } finally {
    for (const r of reqs) r.destroy();
    agent.destroy();
  }
}

const [mode, url, a, b, c] = process.argv.slice(2);
try {
  if (mode === 'latency') await latency(url, Number(a), Number(b), c || 'tokens=32;itl=1');
  else if (mode === 'idle') await idle(url, Number(a), String(b).split(',').filter(Boolean));
  else throw new Error('usage: stream_client.mjs latency URL N CONC [SCENARIO] | idle URL M PIDS');
  process.exit(0);
} catch (e) {
  console.error(`stream_client: ${e.message}`);
  process.exit(1);
}
