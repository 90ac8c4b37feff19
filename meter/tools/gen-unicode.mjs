// Generates meter/data/unicode_classes.bin: for every code point, the
// character classes the cl100k_base and o200k_base pre-tokenizer regexes use
// (\p{L}, \p{N}, \p{M}, White_Space, and o200k's two case classes), as a
// two-stage table the C splitter embeds at build time (meter/BUILD).
//
// Source of truth: Node's ICU (`/\p{..}/u` on this machine's Node). tiktoken's
// regex engine (Rust regex-syntax, compiled into the npm tiktoken WASM) may
// use an older Unicode version than Node's ICU; characters assigned only in
// the newer version are unassigned (class "other") for tiktoken. So the
// generator asks the installed npm tiktoken, once, which of the code points
// Node calls letter/number/mark it treats as such (one batched encode, see
// probe()), and clears the classes of the ones it does not: the table then
// follows tiktoken's Unicode version exactly. The counts are printed.
//
// File layout (little-endian): "TGUC0001" | u32 nblocks | u16 stage1[0x1100]
// | nblocks * 256 class bytes. Class bits: see meter/tg_meter_int.h.
// Usage: node gen-unicode.mjs <out.bin>
import { writeFileSync, renameSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '../../package.json'));
const { get_encoding } = require('tiktoken');

const C_L = 1, C_N = 2, C_WS = 4, C_M = 8, C_UP = 16, C_LO = 32;
const MAXCP = 0x110000;
const re = {
  L: /\p{L}/u, N: /\p{N}/u, M: /\p{M}/u, WS: /\p{White_Space}/u,
  UP: /[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]/u, LO: /[\p{Ll}\p{Lm}\p{Lo}\p{M}]/u,
};
const cls = new Uint8Array(MAXCP);
for (let cp = 0; cp < MAXCP; cp++) {
  if (cp >= 0xd800 && cp <= 0xdfff) continue; // never produced by UTF-8 decoding
  const s = String.fromCodePoint(cp);
  let c = 0;
  if (re.L.test(s)) c |= C_L;
  if (re.N.test(s)) c |= C_N;
  if (re.M.test(s)) c |= C_M;
  if (re.WS.test(s)) c |= C_WS;
  if (re.UP.test(s)) c |= C_UP;
  if (re.LO.test(s)) c |= C_LO;
  cls[cp] = c;
}

// probe: with o200k_base, "\n" + c + "'s" splits as ["\n", "c's"] when c is a
// letter or mark (the contraction suffix joins it), as ["\n", "c", "'s"] when c
// is a number, and as ["\n", "c'", "s"] when c is neither. So the ids of each
// group end with the token "'s" (885) or "s" (82) respectively.
const enc = get_encoding('o200k_base');
const NL = enc.encode('\n')[0], APOS_S = enc.encode("'s")[0], S = enc.encode('s')[0];
const cand = [];
for (let cp = 0; cp < MAXCP; cp++) {
  if ((cls[cp] & (C_L | C_N | C_M)) && !(cls[cp] & C_WS) && cp !== 0x73 && cp !== 0x27) cand.push(cp);
}
const parts = [];
for (const cp of cand) parts.push('\n', String.fromCodePoint(cp), "'s");
const ids = enc.encode(parts.join(''));
enc.free();
const groups = [];
let cur = null;
for (const id of ids) {
  if (id === NL) { if (cur) groups.push(cur); cur = []; } else cur.push(id);
}
if (cur) groups.push(cur);
if (groups.length !== cand.length) throw new Error(`probe: ${groups.length} groups for ${cand.length} code points`);
let cleared = 0, ambiguous = 0;
for (let i = 0; i < cand.length; i++) {
  const last = groups[i][groups[i].length - 1];
  if (last === S) { cls[cand[i]] = 0; cleared++; } else if (last !== APOS_S) ambiguous++;
}

// two-stage table
const blocks = new Map();
const stage1 = new Uint16Array(MAXCP >> 8);
const data = [];
for (let b = 0; b < MAXCP >> 8; b++) {
  const blk = cls.subarray(b << 8, (b + 1) << 8);
  const key = Buffer.from(blk).toString('latin1');
  if (!blocks.has(key)) { blocks.set(key, blocks.size); data.push(Buffer.from(blk)); }
  stage1[b] = blocks.get(key);
}
const head = Buffer.alloc(12);
head.write('TGUC0001', 0, 'latin1');
head.writeUInt32LE(blocks.size, 8);
const out = process.argv[2];
if (!out) { console.error('usage: gen-unicode.mjs <out.bin>'); process.exit(2); }
writeFileSync(out + '.tmp', Buffer.concat([head, Buffer.from(stage1.buffer), ...data]));
renameSync(out + '.tmp', out);
console.log(`gen-unicode: Node ICU Unicode ${process.versions.unicode}; ${cand.length} letter/number/mark code points probed, ` +
  `${cleared} unassigned for tiktoken (cleared), ${ambiguous} ambiguous (kept); ${blocks.size} blocks`);
