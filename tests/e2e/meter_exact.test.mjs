// Exactness of meter/'s tokenizer against tiktoken itself (the npm `tiktoken`
// package: OpenAI's Rust core built to WASM): the same token ids for every
// document of a generated corpus, both encodings, zero mismatches. The C side
// runs in one process (meter/meter_batch) that reads many documents.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { bin, ROOT } from './lib/proc.mjs';
import { documents, randomBytes, rng } from '../../bench/meter/corpus.mjs';

const require = createRequire(path.join(ROOT, 'package.json'));
const { get_encoding } = require('tiktoken');
const ENCODINGS = ['cl100k_base', 'o200k_base'];

// Runs meter_batch on [{ enc, mode, bytes }] and returns its output lines, one
// per record: "<count> <ids...>" or "ERR <message>".
function runLines(records) {
  const chunks = [];
  for (const r of records) {
    chunks.push(Buffer.from(`${r.enc} ${r.mode} ${r.bytes.length}\n`), r.bytes);
  }
  const out = spawnSync(bin('meter/meter_batch'), [], {
    input: Buffer.concat(chunks), maxBuffer: 1 << 30, timeout: 120000,
  });
  assert.equal(out.status, 0, `meter_batch failed: ${out.stderr}`);
  const lines = out.stdout.toString().split('\n');
  lines.pop();
  assert.equal(lines.length, records.length, 'one output line per record');
  return lines;
}

// Parses runLines' output: an array of ids, or { err } for a refused text.
function runBatch(records) {
  return runLines(records).map((l) => {
    if (l.startsWith('ERR ')) return { err: l.slice(4) };
    const f = l.split(' ').map(Number);
    assert.equal(f[0], f.length - 1, 'count matches the ids printed');
    return f.slice(1);
  });
}

// Compares every record's ids with tiktoken's; returns the mismatches. The
// lines are compared as text first (fast); a differing line is parsed to say
// where it differs.
function compare(records, lines, expect) {
  const bad = [];
  records.forEach((r, i) => {
    const want = expect(r);
    if (lines[i] === (want.length ? `${want.length} ${want.join(' ')}` : '0')) return;
    const got = lines[i].startsWith('ERR ') ? { err: lines[i].slice(4) } : lines[i].split(' ').slice(1).map(Number);
    if (JSON.stringify(want) !== JSON.stringify(got)) {
      let at = 0;
      while (Array.isArray(got) && at < want.length && want[at] === got[at]) at++;
      bad.push(`${r.enc} ${r.label}: first difference at id #${at}: want ${JSON.stringify(want.slice?.(at, at + 5) ?? want)} got ${JSON.stringify(Array.isArray(got) ? got.slice(at, at + 5) : got)}`);
    }
  });
  return bad;
}

const encs = Object.fromEntries(ENCODINGS.map((e) => [e, get_encoding(e)]));
const ordinary = (r) => [...encs[r.enc].encode_ordinary(r.text)];

test('generated corpus: prose, code, JSON, CJK, Arabic, emoji, marks, whitespace, runs, digits, random Unicode', () => {
  const docs = documents(20261124, 30, 4000);
  const records = [];
  for (const enc of ENCODINGS) {
    docs.forEach((d, i) => records.push({ enc, mode: 'text', text: d.text, bytes: Buffer.from(d.text), label: `${d.kind}#${i}` }));
  }
  const bad = compare(records, runLines(records), ordinary);
  const kinds = new Set(docs.map((d) => d.kind));
  assert.ok(kinds.size >= 15, 'all corpus kinds present');
  assert.ok(records.length >= 900);
  assert.deepEqual(bad.slice(0, 5), [], `${bad.length} of ${records.length} documents differ`);
});

test('every code point in letter, digit, contraction and whitespace contexts', () => {
  // For each code point c: "xc", "cc's", " c1", "c\n" - this exercises each
  // character's class in both pre-tokenizers (letter runs, prefixes, case
  // classes, numbers, punctuation runs, white space).
  // Planes 0-3 and 14 (where characters are assigned) fully; the unassigned
  // planes 4-13 and the private-use planes 15-16 by a sample.
  const records = [];
  for (let lo = 0; lo < 0x110000; lo += 0x8000) {
    let s = '';
    const step = (lo >= 0x40000 && lo < 0xe0000) || lo >= 0xf0000 ? 61 : 1;
    for (let cp = lo; cp < lo + 0x8000; cp += step) {
      if (cp >= 0xd800 && cp <= 0xdfff) continue;
      const c = String.fromCodePoint(cp);
      s += `x${c}${c}'s ${c}1${c}\n`;
    }
    for (const enc of ENCODINGS) records.push({ enc, mode: 'text', text: s, bytes: Buffer.from(s), label: `U+${lo.toString(16)}..` });
  }
  const bad = compare(records, runLines(records), ordinary);
  assert.deepEqual(bad.slice(0, 5), [], `${bad.length} of ${records.length} blocks differ`);
});

test('long runs of one character (tiktoken is quadratic on these: kept to 20k bytes here)', () => {
  const records = [];
  for (const ch of ['a', ' ', '\n', '1', '!', 'é', '中', '😀', '\u0301', 'ab', ' \n']) {
    for (const n of [1, 2, 15, 16, 17, 63, 64, 65, 300, 512, 513, 4096, Buffer.byteLength(ch) === 1 ? 20000 : 5000]) {
      const text = ch.repeat(n);
      for (const enc of ENCODINGS) records.push({ enc, mode: 'text', text, bytes: Buffer.from(text), label: `${JSON.stringify(ch)}x${n}` });
    }
  }
  const bad = compare(records, runLines(records), ordinary);
  assert.deepEqual(bad.slice(0, 5), [], `${bad.length} of ${records.length} runs differ`);
});

test('invalid UTF-8 and random bytes count as their U+FFFD-decoded text', () => {
  const r = rng(7);
  const records = [];
  const fixed = [[0xff], [0xc0, 0x80], [0xe0, 0x80, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xf0, 0x9f, 0x98],
    [0x61, 0xe2, 0x82], [0xe2, 0x82, 0x61], [0xc3], [0x80, 0x80, 0x80], [0xfe, 0xff, 0x61, 0x27, 0x73]];
  const blobs = fixed.map((b) => Buffer.from(b));
  for (let i = 0; i < 300; i++) blobs.push(randomBytes(r, r.int(1, 3000)));
  for (const enc of ENCODINGS) {
    blobs.forEach((b, i) => records.push({ enc, mode: 'text', bytes: b, text: b.toString('utf8'), label: `bytes#${i}` }));
  }
  assert.ok(blobs.some((b) => !b.equals(Buffer.from(b.toString('utf8')))), 'the corpus holds invalid UTF-8');
  const bad = compare(records, runLines(records), ordinary);
  assert.deepEqual(bad.slice(0, 5), [], `${bad.length} of ${records.length} byte strings differ`);
});

test('special tokens: allowed, rejected, or counted as text', () => {
  const texts = ['<|endoftext|>', 'a<|endoftext|>b', 'x <|fim_prefix|>y<|fim_middle|> z<|fim_suffix|>', '<|endofprompt|><|endoftext|>',
    '<|endoftext', '<|<|endoftext|>|>', 'no special here', "it's<|endoftext|>'s"];
  for (const enc of ENCODINGS) {
    const e = encs[enc];
    const records = texts.flatMap((text, i) => ['allow', 'reject', 'text'].map((mode) => ({ enc, mode, text, bytes: Buffer.from(text), label: `${mode}#${i}` })));
    const got = runBatch(records);
    records.forEach((rec, i) => {
      if (rec.mode === 'text') assert.deepEqual(got[i], [...e.encode_ordinary(rec.text)], rec.label);
      else if (rec.mode === 'allow') assert.deepEqual(got[i], [...e.encode(rec.text, 'all')], `${enc} ${rec.label}`);
      else {
        let threw = false;
        let want;
        try { want = [...e.encode(rec.text)]; } catch { threw = true; }
        if (threw) assert.match(got[i].err ?? '', /special token <\|/, `${enc} ${rec.label} is rejected`);
        else assert.deepEqual(got[i], want, `${enc} ${rec.label}`);
      }
    });
  }
});
