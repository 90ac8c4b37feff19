// Shared helpers for end-to-end tests: free loopback ports, binaries built by
// Bazel, child processes that are always cleaned up, and waiting for a
// server to come up. Every server binds 127.0.0.1 only; every wait is bounded.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, openSync, writeSync, closeSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = process.env.TG_ROOT ||
  path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

// Every tollgate-cp an e2e test starts (directly, through a helper or a
// script; they inherit this environment) checks each ledger entry settlement
// packs by hand against protobuf-c's bytes and aborts on a difference
// (controlplane/settle.c, "records packed once"). The benchmarks (bench/,
// *_bench.mjs) that share these helpers measure without it: the check packs
// every entry a second time, inside the commit lock (it doubled settlement's
// build phase in settle_bench until session 6 of issue 18 found it). The
// script's path is taken relative to the checkout, so a checkout under a
// directory named bench still checks.
const SCRIPT = process.argv[1] ? path.relative(ROOT, path.resolve(process.argv[1])).split(path.sep).join('/') : '';
process.env.TG_CP_CHECK_PACKING ??= /^bench\/|_bench\.mjs$/.test(SCRIPT) ? '0' : '1';

// Directory of Bazel outputs: tests/run.sh exports TG_BIN (`bazel info bazel-bin`).
export const BIN = process.env.TG_BIN || path.join(ROOT, 'bazel-bin');

// Path of a built binary, e.g. bin('tools/mockllm/mockllm'). Throws a clear
// error when it was not built.
export function bin(rel) {
  const p = path.join(BIN, rel);
  if (!existsSync(p)) throw new Error(`${p} not found: run 'bazel build //...' (TG_BIN=${BIN})`);
  return p;
}

// A free TCP port on 127.0.0.1 (the OS picks it; a tiny race remains, so
// servers that can should be started on port 0 and report their port).
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const children = new Set();
const tmpdirs = new Set();
function killAll() {
  for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
  for (const d of tmpdirs) { try { rmSync(d, { recursive: true, force: true }); } catch { /* ignore */ } }
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { killAll(); process.exit(130); });

// A temp directory removed when the test process exits.
export function tmpdir(prefix = 'tg-') {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix));
  tmpdirs.add(d);
  return d;
}

// The daemons whose whole output goes to $TG_E2E_LOGDIR when it is set
// (tests/run.sh then greps those logs for the test credentials).
const LOGGED = new Set(['tollgate-agent', 'tollgate-cp']);

// Starts a process; its output is kept (last 64 KB) for error messages.
// Returns { child, output(), stop(signal, timeoutMs), exited }.
export function start(cmd, args = [], opts = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  children.add(child);
  let out = '';
  let log = -1; // written synchronously: nothing is lost when the test process exits
  if (process.env.TG_E2E_LOGDIR && LOGGED.has(path.basename(cmd))) {
    log = openSync(path.join(process.env.TG_E2E_LOGDIR, `${path.basename(cmd)}-${process.pid}-${child.pid}.log`), 'a');
    child.on('close', () => { closeSync(log); log = -1; }); // after the last output, unlike 'exit'
  }
  const keep = (d) => {
    if (log >= 0) writeSync(log, d);
    out += d.toString(); if (out.length > 65536) out = out.slice(-65536);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => {
    children.delete(child);
    resolve({ code, signal });
  }));
  return {
    child,
    exited,
    output: () => out,
    // Sends `signal`, then SIGKILL after timeoutMs; resolves with the exit.
    async stop(signal = 'SIGTERM', timeoutMs = 5000) {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill(signal);
      const t = setTimeout(() => { try { child.kill('SIGKILL'); } catch { /* gone */ } }, timeoutMs);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
}

// Resolves once a TCP connect to host:port succeeds; rejects after timeoutMs
// or as soon as `proc` (optional, from start()) exits.
export async function waitForPort(port, { host = '127.0.0.1', timeoutMs = 10000, proc } = {}) {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  if (proc) proc.exited.then(() => { exited = true; });
  while (Date.now() < deadline) {
    if (exited) throw new Error(`process exited before listening on ${port}:\n${proc.output()}`);
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, host);
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listening on ${host}:${port} after ${timeoutMs} ms` +
    (proc ? `:\n${proc.output()}` : ''));
}

// Polls fn() until it returns a truthy value or timeoutMs passes.
export async function until(fn, { timeoutMs = 10000, intervalMs = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}` + (last instanceof Error ? `: ${last.message}` : ''));
}
