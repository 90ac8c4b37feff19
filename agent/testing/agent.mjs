// Node helpers for tests that run tollgate-agent: write a snapshot (JSON,
// read by the agent through pbjson), start the agent on a free port (it
// prints its real port), and read the usage records it emits (one JSON log
// line per request, comp "usage", until the LMDB outbox lands).
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { bin, start, tmpdir, until } from '../../tests/e2e/lib/proc.mjs';

// base64 SHA-256 of an API key secret, as the snapshot's secret_sha256.
export function keyHash(secret) {
  return createHash('sha256').update(secret).digest('base64');
}

// Starts tollgate-agent with `snapshot` (an object in the proto3 JSON
// mapping) unless opts.noSnapshot; resolves { url, base, port, metricsUrl, proc, dir,
// records(), waitRecord(id), reload(snapshot), stop() }.
export async function startAgent(snapshot, { args = [], dir, noSnapshot = false, timeoutMs = 10000 } = {}) {
  dir = dir || tmpdir('tg-agent-');
  mkdirSync(dir, { recursive: true });
  const snapPath = path.join(dir, 'snapshot.json');
  const flags = ['--port', '0', '--data-dir', path.join(dir, 'data'), '--log-records', ...args];
  // tests/run.sh runs the upstream-heavy files again with libcurl
  if (process.env.TG_UPSTREAM_CLIENT) flags.push('--upstream-client', process.env.TG_UPSTREAM_CLIENT);
  if (!noSnapshot) {
    writeFileSync(snapPath, JSON.stringify(snapshot));
    flags.push('--snapshot', snapPath);
  }
  const proc = start(bin('agent/tollgate-agent'), flags);
  let metricsUrl = null;
  const port = await new Promise((resolve, reject) => {
    let buf = '';
    const t = setTimeout(() => reject(new Error(`agent did not report its port:\n${proc.output()}`)), timeoutMs);
    proc.child.stdout.on('data', (d) => {
      buf += d.toString();
      const mm = buf.match(/^tollgate-agent metrics on (\S+:\d+)$/m);
      if (mm) metricsUrl = `http://${mm[1]}`;
      const m = buf.match(/^tollgate-agent listening on 127\.0\.0\.1:(\d+)$/m);
      if (m) { clearTimeout(t); resolve(Number(m[1])); }
    });
    proc.exited.then(() => { clearTimeout(t); reject(new Error(`agent exited:\n${proc.output()}`)); });
  });
  const url = `http://127.0.0.1:${port}`;
  // (the kept output is its last 64 KB: its first line may be cut, and is skipped)
  const records = () => proc.output().split('\n')
    .filter((l, i) => l.includes('"comp":"usage"') && (i > 0 || l.startsWith('{"ts"')))
    .map((l) => JSON.parse(JSON.parse(l).record));
  return {
    url,
    base: `${url}/v1`,
    port,
    metricsUrl, // /metrics, /healthz, /readyz (--metrics-listen); never on the public port
    proc,
    dir,
    records,
    // The record of request `id` (the x-request-id), waited for.
    waitRecord: (id, timeoutMs = 5000) =>
      until(() => records().find((r) => r.request_id === id), { timeoutMs, what: `usage record of ${id}` }),
    // Rewrites the snapshot file and sends SIGHUP (the agent swaps it in).
    reload(snap) {
      writeFileSync(snapPath, JSON.stringify(snap));
      proc.child.kill('SIGHUP');
    },
    stop: () => proc.stop('SIGTERM'),
    // The records waiting in the outbox: [{ seq, record }], oldest first.
    outbox: () => dumpOutbox(path.join(dir, 'data')),
  };
}

// Runs `tollgate-agent outbox-dump` on a data dir (works beside a running
// agent and after a killed one).
export function dumpOutbox(dataDir) {
  const out = execFileSync(bin('agent/tollgate-agent'), ['outbox-dump', '--data-dir', dataDir], { encoding: 'utf8', maxBuffer: 256 << 20 });
  return out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
}
