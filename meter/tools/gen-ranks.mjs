// Converts the rank table that the npm `tiktoken` package ships
// (node_modules/tiktoken/encoders/<name>.json, field bpe_ranks: lines of
// "! <first-rank> <base64 token> <base64 token> ...", ranks consecutive from
// first-rank) into OpenAI's canonical .tiktoken text format: one
// "<base64 token> <rank>\n" line per token, in rank order. The result must be
// byte-for-byte OpenAI's published file; fetch-ranks.sh checks its SHA-256.
// Usage: node gen-ranks.mjs <encoders/name.json> <out.tiktoken>
import { readFileSync, writeFileSync, renameSync } from 'node:fs';

const [src, out] = process.argv.slice(2);
if (!src || !out) { console.error('usage: gen-ranks.mjs <in.json> <out.tiktoken>'); process.exit(2); }
const j = JSON.parse(readFileSync(src, 'utf8'));
const rows = [];
for (const line of j.bpe_ranks.split('\n')) {
  if (!line) continue;
  const [bang, first, ...toks] = line.split(' ');
  if (bang !== '!') throw new Error(`unexpected line start '${bang}' in ${src}`);
  let r = Number.parseInt(first, 10);
  for (const t of toks) rows.push(`${t} ${r++}\n`);
}
writeFileSync(out + '.tmp', rows.join(''));
renameSync(out + '.tmp', out);
