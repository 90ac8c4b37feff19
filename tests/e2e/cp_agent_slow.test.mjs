// A Sync stream whose agent stops reading: the control plane must not queue
// updates for it without bound. Once its send queue is full the stream is
// marked for a fresh snapshot; when the agent reads again it gets a Snapshot
// at a later revision that includes every change it missed, while a second,
// attentive agent got every update in order.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { until } from './lib/proc.mjs';
import { FakeAgent, seed, startCp } from './cp_agent_lib.mjs';

let cp;
after(async () => { await cp?.stop('SIGKILL'); });

test('a stalled Sync stream is resnapshotted, not buffered without bound', async () => {
  cp = await startCp({ nodeId: 'cp-slow' });
  const ids = await seed(cp, { topup: 0n });
  const slow = new FakeAgent(cp, 'slow');
  const fast = new FakeAgent(cp, 'fast');
  await slow.enroll();
  await fast.enroll();
  const s = await slow.sync();
  const f = await fast.sync();
  await until(() => s.messages.length >= 1 && f.messages.length >= 1, { timeoutMs: 5000, what: 'both snapshots' });
  s.stream.pause();

  // ~3 MB of price-card updates: more than the stream's 1 MiB queue and
  // the HTTP/2 windows
  const entries = [];
  for (let i = 0; i < 600; i++) {
    entries.push({ model: `model-${i}-${'x'.repeat(60)}`, input_per_mtok_nano: String(1000 + i), output_per_mtok_nano: '2000' });
  }
  let last;
  for (let v = 0; v < 40; v++) {
    last = await cp.adminCall('PublishPriceCard', { card: { id: 'big-card', currency: 'USD', note: `v${v}`, entries } });
  }
  // the attentive agent saw all 40 versions as updates, in order
  await until(() => f.messages.filter((x) => x.m.update?.changes.some((c) => c.price_card?.id === 'big-card')).length >= 40,
    { timeoutMs: 10000, what: 'the fast agent to get every update' });
  const revs = f.messages.filter((x) => x.m.update).map((x) => Number(x.m.update.revision));
  assert.deepEqual(revs, [...revs].sort((a, b) => a - b), 'updates in revision order');
  for (let i = 1; i < f.messages.length; i++) {
    const u = f.messages[i].m.update;
    const prev = f.messages.slice(0, i).reverse().find((x) => x.m.update || x.m.snapshot)?.m;
    if (u && prev) assert.equal(u.from_revision, (prev.update || prev.snapshot).revision, 'no gap between updates');
  }

  // the slow one resumes: somewhere after what fit in the queue comes a
  // fresh snapshot holding the last version
  s.stream.resume();
  const snap = await until(() => s.messages.slice(1).find((x) => x.m.snapshot), { timeoutMs: 15000, what: 'a fresh snapshot for the slow agent' });
  const card = snap.m.snapshot.price_cards.find((c) => c.id === 'big-card');
  assert.ok(card, 'the resnapshot carries the card');
  assert.ok(Number(card.version) <= Number(last.version));
  await until(() => {
    const seen = s.messages.flatMap((x) => (x.m.snapshot?.price_cards || []).concat((x.m.update?.changes || []).map((c) => c.price_card).filter(Boolean)));
    return seen.some((c) => c.id === 'big-card' && c.version === last.version);
  }, { timeoutMs: 10000, what: 'the slow agent to reach the last version' });
  assert.ok(ids.account);
  s.stream.cancel();
  f.stream.cancel();
});
