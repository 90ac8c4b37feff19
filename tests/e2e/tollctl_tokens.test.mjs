// `tollctl tokens`: what an operator types to check a disputed token count.
// Counts and ids are compared with tiktoken (npm, OpenAI's core in WASM).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { bin, ROOT } from './lib/proc.mjs';

const require = createRequire(path.join(ROOT, 'package.json'));
const { get_encoding } = require('tiktoken');

function tollctl(args, input = '') {
  const r = spawnSync(bin('cli/tollctl'), args, { input, maxBuffer: 1 << 28, timeout: 60000 });
  return { code: r.status, out: r.stdout.toString(), err: r.stderr.toString() };
}

const TEXT = "Tollgate meters every request: it's exact.\n中文、日本語、한국어 and emoji 👩‍💻 — 12345 tokens?";

test('prints the count and, with --ids, the ids tiktoken gives', () => {
  for (const enc of ['cl100k_base', 'o200k_base']) {
    const want = [...get_encoding(enc).encode_ordinary(TEXT)];
    const c = tollctl(['tokens', '--encoding', enc], TEXT);
    assert.equal(c.code, 0, c.err);
    assert.equal(c.out, `${want.length}\n`);
    const i = tollctl(['tokens', '--encoding', enc, '--ids'], TEXT);
    assert.equal(i.code, 0, i.err);
    assert.equal(i.out, `${want.length}\n${want.join(' ')}\n`);
  }
});

test('--model picks the encoding from the model map', () => {
  const o200k = get_encoding('o200k_base').encode_ordinary(TEXT).length;
  const cl100k = get_encoding('cl100k_base').encode_ordinary(TEXT).length;
  assert.notEqual(o200k, cl100k, 'the text tells the encodings apart');
  for (const [model, want] of [['gpt-4o', o200k], ['gpt-4o-mini-2024-07-18', o200k], ['gpt-5', o200k], ['o3-mini', o200k],
    ['gpt-4.1-nano', o200k], ['openai/gpt-4o', o200k], ['gpt-4', cl100k], ['gpt-4-turbo', cl100k], ['gpt-3.5-turbo', cl100k]]) {
    const r = tollctl(['tokens', '--model', model], TEXT);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, `${want}\n`, model);
    assert.equal(r.err, '', `${model} is exact, no estimate note`);
  }
});

test('models without a public tokenizer print an estimate and say so', () => {
  const o200k = get_encoding('o200k_base').encode_ordinary(TEXT).length;
  const r = tollctl(['tokens', '--model', 'claude-sonnet-4-5'], TEXT);
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out, `${Math.ceil(o200k * 1.2)}\n`);
  assert.match(r.err, /'claude-sonnet-4-5' has no public tokenizer: \d+ is an estimate \(o200k_base count \d+ x 1\.200000\)/);
});

test('special tokens: text by default, allowed or rejected on request', () => {
  const t = 'a<|endoftext|>b';
  const enc = get_encoding('cl100k_base');
  const asText = tollctl(['tokens', '--encoding', 'cl100k_base', '--ids'], t);
  assert.equal(asText.out, `${enc.encode_ordinary(t).length}\n${[...enc.encode_ordinary(t)].join(' ')}\n`);
  const allow = tollctl(['tokens', '--encoding', 'cl100k_base', '--ids', '--special', 'allow'], t);
  assert.equal(allow.out, '3\n64 100257 65\n');
  const reject = tollctl(['tokens', '--encoding', 'cl100k_base', '--special', 'reject'], t);
  assert.equal(reject.code, 1);
  assert.equal(reject.out, '');
  assert.match(reject.err, /special token <\|endoftext\|> at byte 1/);
});

test('bad flags get clear messages and exit 2', () => {
  const cases = [
    [['tokens', '--encoding', 'x'], "tollctl tokens: unknown encoding 'x': use cl100k_base or o200k_base\n"],
    [['tokens'], 'tollctl tokens: --encoding cl100k_base|o200k_base or --model NAME is required\n'],
    [['tokens', '--encoding'], 'tollctl tokens: --encoding needs a value\n'],
    [['tokens', '--encoding', 'cl100k_base', '--model', 'gpt-4o'], 'tollctl tokens: give --encoding or --model, not both\n'],
    [['tokens', '--encoding', 'cl100k_base', '--bogus'], "tollctl tokens: unknown flag '--bogus' (see tollctl help tokens)\n"],
    [['tokens', '--encoding', 'cl100k_base', '--special', 'maybe'], "tollctl tokens: unknown --special 'maybe': use text, allow or reject\n"],
  ];
  for (const [args, msg] of cases) {
    const r = tollctl(args, 'hello');
    assert.equal(r.code, 2, args.join(' '));
    assert.equal(r.err, msg);
    assert.equal(r.out, '');
  }
  const u = tollctl(['frobnicate']);
  assert.equal(u.code, 2);
  assert.match(u.err, /unknown command 'frobnicate'[\s\S]*tokens/);
  const h = tollctl(['help']);
  assert.equal(h.code, 0);
  assert.match(h.out, /tokens +count the tokens of stdin/);
});

test('empty input, invalid UTF-8', () => {
  assert.equal(tollctl(['tokens', '--encoding', 'o200k_base', '--ids'], '').out, '0\n\n');
  const bytes = Buffer.from([0x61, 0xff, 0xe2, 0x82, 0x62, 0xc0]);
  const want = [...get_encoding('o200k_base').encode_ordinary(bytes.toString('utf8'))];
  assert.equal(tollctl(['tokens', '--encoding', 'o200k_base', '--ids'], bytes).out, `${want.length}\n${want.join(' ')}\n`);
});

test('1 MB of one character counts quickly and the ids spell the input back', () => {
  for (const ch of ['a', ' ', '中']) {
    const text = ch.repeat(ch === '中' ? 333333 : 1000000);
    const t0 = process.hrtime.bigint();
    const r = tollctl(['tokens', '--encoding', 'cl100k_base', '--ids'], text);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    assert.equal(r.code, 0, r.err);
    const [count, ids] = r.out.split('\n');
    const list = ids.split(' ').map(Number);
    assert.equal(Number(count), list.length);
    // decoding is linear in tiktoken: the ids must cover exactly the input
    assert.equal(new TextDecoder().decode(get_encoding('cl100k_base').decode(new Uint32Array(list))), text);
    assert.ok(ms < 5000, `${JSON.stringify(ch)} x 1M took ${ms} ms (tiktoken: minutes, or a crash)`);
  }
});
