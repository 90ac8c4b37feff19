#!/usr/bin/env node
// research-run.mjs: a long multi-step client under one run budget.
//
// An agent-style loop (plan, then research steps that alternate models, then a
// summary) sends every request with the same X-Tollgate-Run header through the
// official openai SDK, with the SDK's own retries on. The gateway holds the
// whole run to its budget: when the run cannot afford the next step it answers
// 402 run_budget_exceeded, and this client stops cleanly instead of failing.
// At the end it prints the run receipt from the control plane: every request
// and attempt, what was spent, held and left of the budget.
//
// Environment:
//   OPENAI_BASE_URL, OPENAI_API_KEY   the gateway (tollgate-agent) and a key
//   TOLLGATE_RUN                      the run id (default: research-<time>)
//   TOLLGATE_MODELS                   models to alternate (default gpt-4o-mini)
//   TOLLGATE_STEPS                    research steps at most (default 20)
//   TOLLGATE_CP, TOLLGATE_ADMIN_TOKEN the control plane's gRPC address and a
//                                     reader token, for the receipt (optional)
// The run's budget is set by an operator beforehand, e.g.
//   tollctl budget put --file budget.json   ({"run_id": ..., "max_spend_nano": ...})
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';

const run = process.env.TOLLGATE_RUN || `research-${Date.now()}`;
const models = (process.env.TOLLGATE_MODELS || 'gpt-4o-mini').split(',').map((m) => m.trim()).filter(Boolean);
const maxSteps = Number(process.env.TOLLGATE_STEPS || 20);
const client = new OpenAI({ maxRetries: 2, defaultHeaders: { 'X-Tollgate-Run': run } });

async function ask(model, content) {
  const r = await client.chat.completions.create({
    model, max_tokens: 64, messages: [{ role: 'system', content: 'You are a careful research assistant.' },
      { role: 'user', content }],
  });
  return r.choices[0]?.message?.content ?? '';
}

// Runs one step; returns its text, or null when the run's budget stops it.
async function step(label, model, content) {
  try {
    const text = await ask(model, content);
    console.log(`step ${label} (${model}): ${text.slice(0, 60).replace(/\s+/g, ' ')}...`);
    return text;
  } catch (e) {
    if (e.status === 402 && e.code === 'run_budget_exceeded') {
      console.log(`run budget reached at step ${label}: ${e.message}`);
      return null;
    }
    throw e;
  }
}

async function receipt() {
  const addr = process.env.TOLLGATE_CP;
  if (!addr) return null;
  const grpc = (await import('@grpc/grpc-js')).default;
  const loader = await import('@grpc/proto-loader');
  const api = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'api');
  const def = loader.loadSync('tollgate/v1/admin.proto', { keepCase: true, longs: String, enums: String, defaults: true, includeDirs: [api] });
  const Admin = grpc.loadPackageDefinition(def).tollgate.v1.AdminService;
  const admin = new Admin(addr, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${process.env.TOLLGATE_ADMIN_TOKEN || ''}`);
  try {
    return await new Promise((resolve, reject) => admin.GetRunReceipt({ run_id: run }, md,
      { deadline: Date.now() + 10000 }, (err, r) => (err ? reject(err) : resolve(r))));
  } finally {
    admin.close();
  }
}

const nano = (v) => (Number(BigInt(v || 0)) / 1e9).toFixed(9);

let steps = 0;
let stopped = false;
const plan = await step('plan', models[0], 'Plan a short study of token pricing across providers.');
if (plan === null) stopped = true;
for (let i = 0; !stopped && i < maxSteps; i++) {
  const model = models[i % models.length];
  const text = await step(`${i + 1}`, model, `Research step ${i + 1} of the plan: ${String(plan).slice(0, 200)}`);
  if (text === null) stopped = true;
  else steps++;
}
if (!stopped) await step('summary', models[0], 'Summarize the findings in three sentences.');
console.log(`run ${run}: ${steps} research steps${stopped ? ', stopped by its budget' : ''}`);

// Settlement is asynchronous: the receipt may trail the last answers by a moment.
await new Promise((r) => setTimeout(r, 1500));
const r = await receipt().catch((e) => { console.log(`no receipt: ${e.details || e.message}`); return null; });
if (r) {
  const t = r.total || {};
  console.log(`receipt: ${t.count || 0} requests, ${r.attempts} attempts, ${r.fallbacks} fallbacks, cost ${nano(t.cost_nano)} ${t.currency || ''}`);
  const b = r.budget_state;
  if (b) console.log(`budget ${nano(b.limit_nano)} ${b.currency}: spent ${nano(b.spent_nano)}, held ${nano(b.reserved_nano)}, remaining ${nano(b.remaining_nano)}`);
  for (const rec of r.records) {
    console.log(`  ${rec.request_id} ${rec.requested_model} -> ${rec.upstream_model || '-'} status ${rec.client_status} ` +
      `attempts ${rec.attempts.length} cost ${nano(rec.cost_nano)}`);
  }
}
