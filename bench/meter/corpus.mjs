// A deterministic generator of tokenizer test text, shared by the exactness
// tests (tests/e2e/meter_exact.test.mjs) and the benchmark (bench/meter):
// English prose, code, JSON, Chinese, Japanese, Korean, Arabic, emoji with
// ZWJ sequences, combining marks, whitespace and newline runs, runs of one
// character, digits, contractions, random Unicode and random bytes.
// Everything comes from a seeded PRNG, so a failure reproduces exactly.

export function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)); // inclusive
  const pick = (arr) => arr[Math.floor(next() * arr.length)];
  return { next, int, pick };
}

const WORDS = ('the of and to in is was he for it with as his on be at by had are but from or have an ' +
  'they which one you were all we her she there would their will when who him been has more if no out ' +
  'so said what up its about than into them can only other time new some could these two may first then ' +
  'do any like my now over such our man me even most made after also did many off before must well back ' +
  'through years much where your way down should because each just those people how too little state good ' +
  'very make world still see own men work long here get both between life being under never day same another ' +
  'know while last might us great old year off come since against go came right used take three tokenizer ' +
  'gateway billing ledger settlement upstream latency throughput internationalization antidisestablishment').split(' ');
const CONTRACTIONS = ["it's", "they're", "I'll", "we've", "don't", "I'm", "she'd", "IT'S", "THEY'RE",
  "We'Ve", "you'LL", "O'Neil", "rock'n'roll", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "x'ſ", "'ſ"];

function prose(r, n) {
  let out = '';
  while (out.length < n) {
    let s = '';
    const len = r.int(4, 25);
    for (let i = 0; i < len; i++) {
      let w = r.next() < 0.1 ? r.pick(CONTRACTIONS) : r.pick(WORDS);
      if (i === 0 || r.next() < 0.05) w = w[0].toUpperCase() + w.slice(1);
      if (r.next() < 0.02) w = w.toUpperCase();
      s += (i ? (r.next() < 0.03 ? '  ' : ' ') : '') + w;
      if (r.next() < 0.08) s += r.pick([',', ';', ':', ' -', ' —', '…', '"', ')', '?!']);
    }
    out += s + r.pick(['. ', '.\n', '! ', '?\n\n', '.\r\n', '. ']);
  }
  return out;
}

function code(r, n) {
  const ids = ['x', 'buf', 'len', 'tg_meter_count', 'i', 'HashMap', 'self', 'nextToken', '__init__', 'MAX_LEN', 'ptr2'];
  const ops = [' = ', ' += ', ' == ', ' != ', ' && ', ' || ', '->', '.', ' << ', ' >>= ', '::', ' => '];
  let out = '';
  let depth = 0;
  while (out.length < n) {
    const ind = r.pick(['    ', '\t', '  ']).repeat(depth);
    const k = r.int(0, 9);
    if (k === 0) { out += ind + `for (int ${r.pick(ids)} = 0; i < ${r.int(0, 100000)}; i++) {\n`; depth++; }
    else if (k === 1 && depth) { depth--; out += ind.slice(0, -4) + '}\n'; }
    else if (k === 2) out += ind + `// ${prose(r, 40).trim()}\n`;
    else if (k === 3) out += ind + `def ${r.pick(ids)}(self, *args, **kw):\n`;
    else if (k === 4) out += ind + `if (${r.pick(ids)}${r.pick(ops)}${r.int(-5, 0xffff)}) return -${r.int(1, 99)};\n`;
    else if (k === 5) out += ind + `printf("%s: %d\\n", ${r.pick(ids)}, 0x${r.int(0, 0xfffffff).toString(16)});\n`;
    else if (k === 6) out += '\n' + ' '.repeat(r.int(0, 12)) + '\n';
    else out += ind + `${r.pick(ids)}${r.pick(ops)}${r.pick(ids)}(${r.pick(ids)}, "${r.pick(WORDS)}");` + r.pick(['\n', '\r\n', '  \n']);
  }
  return out;
}

function json(r, n) {
  const val = (d) => {
    const k = r.int(0, d > 3 ? 3 : 6);
    if (k === 0) return r.int(-1e6, 1e6) / r.pick([1, 10, 1000]);
    if (k === 1) return prose(r, r.int(1, 30)).trim();
    if (k === 2) return r.next() < 0.5;
    if (k === 3) return null;
    if (k === 4) return Array.from({ length: r.int(0, 4) }, () => val(d + 1));
    const o = {};
    for (let i = r.int(0, 4); i > 0; i--) o[r.pick(WORDS) + (r.next() < 0.3 ? '_id' : '')] = val(d + 1);
    return o;
  };
  let out = '';
  while (out.length < n) out += JSON.stringify(val(0), null, r.pick([0, 2, '\t'])) + '\n';
  return out;
}

function fromRanges(r, n, ranges, seps) {
  let out = '';
  while (out.length < n) {
    const [lo, hi] = r.pick(ranges);
    out += String.fromCodePoint(r.int(lo, hi));
    if (r.next() < 0.12) out += r.pick(seps);
  }
  return out;
}

const scripts = {
  chinese: (r, n) => fromRanges(r, n, [[0x4e00, 0x9fff], [0x4e00, 0x4fff]], ['，', '。', '、', '！', ' ', '\n', '“', '”', '1', 'AI']),
  japanese: (r, n) => fromRanges(r, n, [[0x3041, 0x3096], [0x30a1, 0x30fa], [0x4e00, 0x6fff], [0x30fc, 0x30fc]], ['。', '、', '「', '」', ' ', '\n', 'ー']),
  korean: (r, n) => fromRanges(r, n, [[0xac00, 0xd7a3], [0x1100, 0x1112], [0x3131, 0x318e]], [' ', ' ', '. ', ', ', '\n', '?']),
  arabic: (r, n) => fromRanges(r, n, [[0x0621, 0x064a], [0x064b, 0x0652], [0x0660, 0x0669], [0x06f0, 0x06f9]], [' ', ' ', '، ', '. ', '\n', '؟']),
  devanagari_thai: (r, n) => fromRanges(r, n, [[0x0915, 0x0939], [0x093e, 0x094d], [0x0e01, 0x0e30], [0x0e31, 0x0e3a], [0x0e47, 0x0e4e]], [' ', '।', '\n']),
  cyrillic_greek: (r, n) => fromRanges(r, n, [[0x0410, 0x044f], [0x0391, 0x03c9], [0x1f00, 0x1fbc]], [' ', ', ', '.\n', "'s ", "'T"]),
};

function emoji(r, n) {
  const base = [0x1f600, 0x1f64f, 0x1f300, 0x1f5ff, 0x1f680, 0x1f6ff, 0x1f900, 0x1f9ff];
  let out = '';
  while (out.length < n) {
    const k = r.int(0, 7);
    if (k === 0) out += '👨‍👩‍👧‍👦';
    else if (k === 1) out += String.fromCodePoint(0x1f44b, r.int(0x1f3fb, 0x1f3ff)); // skin tone
    else if (k === 2) out += String.fromCodePoint(r.int(0x1f1e6, 0x1f1ff), r.int(0x1f1e6, 0x1f1ff)); // flag
    else if (k === 3) out += '❤️‍🔥' + '\u2764\ufe0f';
    else if (k === 4) out += '🏳️‍🌈 ';
    else if (k === 5) out += ' ' + prose(r, 10).trim() + ' ';
    else { const i = r.int(0, 3) * 2; out += String.fromCodePoint(r.int(base[i], base[i + 1])); }
    if (r.next() < 0.1) out += r.pick([' ', '\n', '!']);
  }
  return out;
}

function combining(r, n) {
  let out = '';
  while (out.length < n) {
    out += r.pick(['a', 'e', 'Z', 'i', 'ß', ' ', '1', '!', 'ǅ', 'ᾈ', '\u0300', "'"]);
    for (let k = r.int(0, 4); k > 0; k--) out += String.fromCodePoint(r.int(0x0300, 0x036f));
    if (r.next() < 0.1) out += r.pick([' ', '\n', "'s", "'LL"]);
  }
  return out;
}

function whitespace(r, n) {
  let out = '';
  while (out.length < n) {
    const len = r.pick([1, 2, 3, 7, 40, 300, 2000]);
    let run = '';
    for (let i = 0; i < len; i++) run += r.pick([' ', ' ', '\t', '\n', '\r\n', '\r', '\u00a0', '\u3000', '\u2003', '\u000b', '\u000c', '\u0085']);
    out += run + r.pick(['x', 'Hello', '1', '!', '', '中', '\u0301']);
  }
  return out;
}

function runs(r, n) {
  let out = '';
  while (out.length < n) {
    const ch = r.pick(['a', ' ', '1', '!', '\n', 'é', '中', '😀', 'ab', '\t', '-', '=', '.', '0', 'A', 'ü', '\u0301', "'"]);
    out += ch.repeat(r.pick([2, 5, 17, 100, 1000, 3000])) + r.pick([' ', '\n', 'x', '']);
  }
  return out;
}

function digits(r, n) {
  let out = '';
  while (out.length < n) {
    const k = r.int(0, 6);
    if (k === 0) out += String(r.int(0, 1e9)) + r.pick([' ', ',', '.', '\n', '']);
    else if (k === 1) out += r.int(0, 99999).toLocaleString('en-US') + ' ';
    else if (k === 2) out += '3.14159265358979323846'.slice(0, r.int(1, 22)) + ' ';
    else if (k === 3) out += String.fromCodePoint(r.int(0x0660, 0x0669), r.int(0xff10, 0xff19), 0x00b2, 0x00bd, 0x2162, r.int(0x2460, 0x2473)) + ' ';
    else if (k === 4) out += `${r.int(1, 31)}/${r.int(1, 12)}/${r.int(1900, 2100)} `;
    else if (k === 5) out += 'x' + r.int(0, 999) + 'y' + r.int(1000, 99999);
    else out += '0'.repeat(r.int(1, 9)) + String(r.int(1, 9)).repeat(r.int(1, 9)) + ' ';
  }
  return out;
}

function randomUnicode(r, n) {
  let out = '';
  while (out.length < n) {
    let cp;
    const k = r.int(0, 5);
    if (k === 0) cp = r.int(0, 0x7f);
    else if (k === 1) cp = r.int(0x80, 0x7ff);
    else if (k === 2) cp = r.int(0x800, 0xffff);
    else if (k === 3) cp = r.int(0x10000, 0x10ffff);
    else if (k === 4) cp = r.int(0x10000, 0x3ffff);
    else cp = r.int(0, 0x2fff);
    if (cp >= 0xd800 && cp <= 0xdfff) continue;
    out += String.fromCodePoint(cp);
  }
  return out;
}

// Text generators by name: (rng, approximate length in UTF-16 units) -> string.
export const KINDS = { prose, code, json, ...scripts, emoji, combining, whitespace, runs, digits, random_unicode: randomUnicode };

// Random bytes (often invalid UTF-8), mixed with valid fragments.
export function randomBytes(r, n) {
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) {
    const k = r.int(0, 9);
    out[i] = k < 3 ? r.int(0x20, 0x7e) : k < 5 ? r.int(0x80, 0xbf) : k < 7 ? r.int(0xc0, 0xff) : r.int(0, 0xff);
  }
  return out;
}

// A list of { kind, text } documents, `count` per kind, each up to maxLen.
export function documents(seed, count, maxLen) {
  const r = rng(seed);
  const docs = [];
  for (const [kind, gen] of Object.entries(KINDS)) {
    for (let i = 0; i < count; i++) docs.push({ kind, text: gen(r, r.int(1, maxLen)) });
  }
  return docs;
}

// A mixed corpus of about `bytes` UTF-8 bytes for the benchmark: mostly prose,
// code and JSON, with every other kind mixed in (no long single-char runs).
export const MIXED = [['prose', 30], ['code', 20], ['json', 15], ['chinese', 6], ['japanese', 4], ['korean', 3],
  ['arabic', 3], ['cyrillic_greek', 4], ['devanagari_thai', 2], ['emoji', 3], ['combining', 2], ['digits', 5], ['whitespace', 3]];
// English-like text only: prose, code and JSON (closer to typical prompts).
export const LATIN = [['prose', 50], ['code', 30], ['json', 20]];

export function benchCorpus(seed, bytes, weights = MIXED) {
  const r = rng(seed);
  const total = weights.reduce((s, [, w]) => s + w, 0);
  const parts = [];
  let size = 0;
  while (size < bytes) {
    let x = r.next() * total;
    let kind = weights[0][0];
    for (const [k, w] of weights) { if ((x -= w) < 0) { kind = k; break; } }
    const s = KINDS[kind](r, r.int(200, 4000)).replace(/[ \t\n\r\u00a0\u3000]{200,}/g, ' ');
    parts.push(s);
    size += Buffer.byteLength(s);
  }
  return parts.join('\n');
}
