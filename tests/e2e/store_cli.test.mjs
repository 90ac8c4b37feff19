// The store as an operator sees it through `tgstore`, on both backends:
// binary-safe put/get/range, a watch in one process seeing writes made by
// others in order, the one-process lock on an LMDB directory, an etcd that
// etcd's own client (etcdctl) reads the same, and clear errors for an
// unreachable etcd and a corrupt LMDB file.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { bin, freePort, start, tmpdir, until, waitForPort } from './lib/proc.mjs';

const TGSTORE = bin('store/tgstore');

function run(cmd, args, timeout = 15000) {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout, encoding: 'latin1' }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}
const tg = (spec, ...args) => run(TGSTORE, [spec, ...args]);

async function startEtcd() {
  const dir = tmpdir('tg-etcd-');
  const client = await freePort();
  const peer = await freePort();
  const url = `http://127.0.0.1:${client}`;
  const proc = start('/usr/bin/etcd', [
    '--data-dir', path.join(dir, 'data'), '--listen-client-urls', url, '--advertise-client-urls', url,
    '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`,
    '--initial-cluster', `default=http://127.0.0.1:${peer}`, '--log-level', 'warn',
  ]);
  await waitForPort(client, { proc, timeoutMs: 20000 });
  await until(async () => (await tg(`etcd:${url}`, 'rev')).code === 0, { timeoutMs: 20000, what: 'etcd answering' });
  return { url, proc };
}

let etcd;
after(async () => { if (etcd) await etcd.proc.stop(); });

for (const backend of ['lmdb', 'etcd']) {
  test(`${backend}: binary-safe put, get and range; a watcher sees every write in order`, async () => {
    let spec;
    if (backend === 'lmdb') {
      spec = `lmdb:${path.join(tmpdir('tg-store-'), 'db')}`;
    } else {
      etcd ??= await startEtcd();
      spec = `etcd:${etcd.url}`;
    }
    const put = await tg(spec, 'put', 'cfg/a\\x00b', 'v\\x00\\xff');
    assert.equal(put.code, 0, put.stderr);
    const rev1 = Number(put.stdout.trim());
    assert.ok(rev1 > 0);
    const got = await tg(spec, 'get', 'cfg/a\\x00b');
    assert.equal(got.stdout, 'v\\x00\\xff\n');
    assert.equal((await tg(spec, 'get', 'cfg/a')).code, 1, 'a key that differs after the NUL is missing');

    if (backend === 'lmdb') {
      // one process per LMDB directory: a second one is refused, clearly
      const watcher = start(TGSTORE, [spec, 'watch', 'cfg/', '--from', String(rev1), '--count', '1']);
      await until(() => watcher.output().includes('PUT'), { what: 'replayed event' });
      await watcher.exited;
      const holder = start(TGSTORE, [spec, 'watch', 'cfg/', '--count', '1', '--timeout-ms', '10000']);
      await until(() => holder.output().includes('watching from'), { what: 'watch started' });
      const locked = await tg(spec, 'put', 'cfg/b', 'x');
      assert.equal(locked.code, 2);
      assert.match(locked.stderr, /open in another process/);
      await holder.stop('SIGTERM');
      return;
    }

    // etcd: a watch in one process, writes from others, every event once, in order
    const watcher = start(TGSTORE, [spec, 'watch', 'cfg/', '--from', String(rev1), '--count', '4', '--timeout-ms', '10000']);
    await until(() => watcher.output().includes('watching from'), { what: 'watch started' });
    const revs = [rev1];
    for (const [k, v] of [['cfg/b', '1'], ['cfg/b', '2']]) {
      const r = await tg(spec, 'put', k, v);
      assert.equal(r.code, 0, r.stderr);
      revs.push(Number(r.stdout.trim()));
    }
    const del = await tg(spec, 'del', 'cfg/b');
    assert.equal(del.stdout.trim(), '1');
    const { code } = await watcher.exited;
    assert.equal(code, 0, watcher.output());
    const events = watcher.output().split('\n').filter((l) => /^(PUT|DELETE) /.test(l));
    assert.deepEqual(events.slice(0, 3), [
      `PUT cfg/a\\x00b v\\x00\\xff ${revs[0]}`, `PUT cfg/b 1 ${revs[1]}`, `PUT cfg/b 2 ${revs[2]}`]);
    assert.match(events[3], new RegExp(`^DELETE cfg/b ${revs[2] + 1}$`));
    // etcd's own client sees the same bytes
    const ctl = await run('etcdctl', [`--endpoints=${etcd.url}`, 'get', 'cfg/', '--prefix', '--keys-only']);
    assert.equal(ctl.code, 0, ctl.stderr);
    assert.ok(ctl.stdout.includes('cfg/a\x00b'), JSON.stringify(ctl.stdout));
    const range = await tg(spec, 'range', 'cfg/');
    assert.equal(range.stdout, `cfg/a\\x00b\tv\\x00\\xff\t${revs[0]}\n`);
  });
}

test('an unreachable etcd is a clear error, quickly', async () => {
  const port = await freePort();
  const t0 = Date.now();
  const r = await tg(`etcd:http://127.0.0.1:${port}`, 'get', 'x');
  assert.equal(r.code, 2);
  assert.match(r.stderr, new RegExp(`etcd unavailable: .*127\\.0\\.0\\.1:${port}`));
  assert.ok(Date.now() - t0 < 5000);
});

test('a corrupt LMDB data file is refused, not opened as a new store', async () => {
  const dir = path.join(tmpdir('tg-store-'), 'db');
  assert.equal((await tg(`lmdb:${dir}`, 'put', 'k', 'v')).code, 0);
  writeFileSync(path.join(dir, 'data.mdb'), Buffer.alloc(16384, 0x5a));
  const r = await tg(`lmdb:${dir}`, 'get', 'k');
  assert.equal(r.code, 2);
  assert.match(r.stderr, /corrupt/);
});
