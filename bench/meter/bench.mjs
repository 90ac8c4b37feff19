// Token-counting benchmark: counts one ~20 MB mixed corpus (bench/meter/
// corpus.mjs, fixed seed) with meter/ (C, //meter:meter_batch) and, in the
// same run, with tiktoken-node (tiktoken-rs as a native addon; cl100k_base
// only) and npm tiktoken (OpenAI's core in WASM), one thread each; then the
// worst case, one character repeated. Prints a markdown table.
//
// Speeds are MB of UTF-8 input per CPU second (the machine is shared, so
// wall time would measure the neighbours too); each number is the best of
// RUNS runs. Usage:
//   TG_BIN=$(bazel info bazel-bin) node bench/meter/bench.mjs [MB] [RUNS]
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchCorpus, LATIN } from './corpus.mjs';

const ROOT = process.env.TG_ROOT || path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = process.env.TG_BIN || path.join(ROOT, 'bazel-bin');
const MB = Number(process.argv[2] || 20);
const RUNS = Number(process.argv[3] || 3);
const require = createRequire(path.join(ROOT, 'package.json'));

const native = require('tiktoken-node');
const nativeFile = Object.keys(require.cache).find((k) => k.endsWith('.node'));
if (!nativeFile) throw new Error('tiktoken-node did not load a native .node binary');
const wasm = require('tiktoken');

const dir = mkdtempSync(path.join(os.tmpdir(), 'tg-meter-bench-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

function cpu() { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; }
function best(fn) {
  let r = null;
  for (let i = 0; i < RUNS; i++) {
    const c0 = cpu(), w0 = process.hrtime.bigint();
    const tokens = fn();
    const s = cpu() - c0, w = Number(process.hrtime.bigint() - w0) / 1e9;
    if (!r || s < r.seconds) r = { tokens, seconds: s, wall: w };
  }
  return r;
}
function meter(enc, file, runs = RUNS) {
  const out = spawnSync(path.join(BIN, 'meter/meter_batch'), ['--bench', enc, file, String(runs)], { encoding: 'utf8' });
  if (out.status !== 0) throw new Error(`meter_batch: ${out.stderr}`);
  const j = JSON.parse(out.stdout);
  return { tokens: j.tokens, seconds: j.seconds };
}

const text = benchCorpus(1, MB * 1e6);
const bytes = Buffer.byteLength(text);
const file = path.join(dir, 'corpus.txt');
writeFileSync(file, text);
console.log(`corpus: ${(bytes / 1e6).toFixed(1)} MB (bench/meter/corpus.mjs seed 1), best of ${RUNS} runs, CPU time`);
console.log(`tiktoken-node native binary: ${path.relative(ROOT, nativeFile)}\n`);

const rows = [];
const row = (name, enc, r) => {
  rows.push({ name, enc, ...r, mbs: bytes / 1e6 / r.seconds, tps: r.tokens / r.seconds });
};
const n = native.getEncoding('cl100k_base');
row('tiktoken-node (Rust, native)', 'cl100k_base', best(() => n.encode(text).length));
for (const enc of ['cl100k_base', 'o200k_base']) {
  const w = wasm.get_encoding(enc);
  row('tiktoken (npm, WASM)', enc, best(() => w.encode_ordinary(text).length));
  w.free();
  row('meter (C, this repo)', enc, meter(enc, file));
}
const nat = rows[0];
const wasmOf = (enc) => rows.find((r) => r.enc === enc && r.name.startsWith('tiktoken ('));
for (const r of rows) {
  const same = rows.filter((x) => x.enc === r.enc).every((x) => x.tokens === r.tokens);
  if (!same) throw new Error(`token counts differ for ${r.enc}: ${rows.map((x) => `${x.name} ${x.tokens}`).join(', ')}`);
}
console.log('| tokenizer | encoding | tokens | CPU s | MB/s | tokens/s | vs native | vs WASM |');
console.log('|---|---|---:|---:|---:|---:|---:|---:|');
for (const r of rows) {
  const vn = r.enc === 'cl100k_base' ? `${(r.mbs / nat.mbs).toFixed(1)}x` : '-';
  console.log(`| ${r.name} | ${r.enc} | ${r.tokens} | ${r.seconds.toFixed(3)} | ${r.mbs.toFixed(2)} | ${(r.tps / 1e6).toFixed(2)}M | ${vn} | ${(r.mbs / wasmOf(r.enc).mbs).toFixed(1)}x |`);
}

// The same comparison on English-like text only (prose, code, JSON: more
// bytes per token, closer to typical prompts), cl100k_base.
{
  const latin = benchCorpus(2, MB * 1e6, LATIN);
  const lb = Buffer.byteLength(latin);
  const lf = path.join(dir, 'latin.txt');
  writeFileSync(lf, latin);
  const rn = best(() => n.encode(latin).length);
  const w2 = wasm.get_encoding('cl100k_base');
  const rw = best(() => w2.encode_ordinary(latin).length);
  w2.free();
  const rm = meter('cl100k_base', lf);
  if (rn.tokens !== rm.tokens || rw.tokens !== rm.tokens) throw new Error('token counts differ on the English-like corpus');
  console.log(`\nEnglish-like corpus (prose, code, JSON; seed 2): ${(lb / 1e6).toFixed(1)} MB, ${rm.tokens} tokens (${(lb / rm.tokens).toFixed(2)} bytes/token), cl100k_base\n`);
  console.log('| tokenizer | CPU s | MB/s | tokens/s | vs native |');
  console.log('|---|---:|---:|---:|---:|');
  for (const [name, r] of [['tiktoken-node (Rust, native)', rn], ['tiktoken (npm, WASM)', rw], ['meter (C, this repo)', rm]]) {
    console.log(`| ${name} | ${r.seconds.toFixed(3)} | ${(lb / 1e6 / r.seconds).toFixed(2)} | ${(r.tokens / r.seconds / 1e6).toFixed(2)}M | ${(rn.seconds / r.seconds).toFixed(1)}x |`);
  }
}

// A chat request's pre-estimate (tg_meter_chat_count: JSON scan + counting
// by the cookbook rules), the agent's per-request cost.
{
  const req = {
    model: 'gpt-4o',
    messages: [
      { role: 'system', content: 'You are a helpful assistant for billing and routing questions. Be concise and precise.' },
      { role: 'user', name: 'alice', content: benchCorpus(3, 600, LATIN).slice(0, 600) },
      { role: 'assistant', content: 'Each message adds a few tokens of overhead; tools are serialized into the prompt.' },
      { role: 'user', content: [{ type: 'text', text: 'And images? Does the name field count?' }, { type: 'image_url', image_url: { url: 'https://example.com/a.png' } }] },
    ],
    tools: [{ type: 'function', function: { name: 'get_weather', description: 'Get the current weather in a city.', parameters: { type: 'object', properties: { city: { type: 'string', description: 'City name.' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } }, required: ['city'] } } }],
    max_tokens: 256,
  };
  const f = path.join(dir, 'chat.json');
  writeFileSync(f, JSON.stringify(req));
  const out = spawnSync(path.join(BIN, 'meter/meter_batch'), ['--chat-bench', f, '20000'], { encoding: 'utf8' });
  if (out.status !== 0) throw new Error(`meter_batch --chat-bench: ${out.stderr}`);
  const j = JSON.parse(out.stdout);
  console.log(`\nchat request pre-estimate: ${j.bytes} bytes JSON, 4 messages + 1 tool, ${j.prompt_tokens} prompt tokens: ${j.us_per_request} us CPU per request (mean of 20000)`);
}

// Worst case: one character repeated. tiktoken's merge is quadratic in the
// length of a piece; meter's is O(n log n).
console.log('\nworst case: one character repeated, cl100k_base, CPU time (meter: first call in a fresh process, and best of 3)\n');
console.log('| input | meter (C) first call | meter (C) best | tiktoken-node (native) | tiktoken (WASM) |');
console.log('|---|---:|---:|---:|---:|');
const w = wasm.get_encoding('cl100k_base');
for (const [ch, len, theirs] of [['a', 10000, true], ['a', 40000, true], ['a', 1000000, false], [' ', 1000000, false], ['中', 333333, false]]) {
  const s = ch.repeat(len);
  const f = path.join(dir, 'run.txt');
  writeFileSync(f, s);
  const cold = meter('cl100k_base', f, 1);
  const m = meter('cl100k_base', f, 3);
  let a = '(not run: minutes)', b = a;
  if (theirs) {
    const rn = best(() => n.encode(s).length), rw = best(() => w.encode_ordinary(s).length);
    if (rn.tokens !== m.tokens || rw.tokens !== m.tokens) throw new Error(`worst case counts differ for ${len} x ${ch}`);
    a = `${rn.seconds.toFixed(3)} s`;
    b = `${rw.seconds.toFixed(3)} s`;
  }
  console.log(`| ${JSON.stringify(ch)} x ${len} (${Buffer.byteLength(s)} bytes) | ${(cold.seconds * 1000).toFixed(1)} ms | ${(m.seconds * 1000).toFixed(1)} ms | ${a} | ${b} |`);
}
w.free();
