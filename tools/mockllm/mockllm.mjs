// Node helpers for tests that need the upstream emulator: start mockllm on a
// free port (it prints its real port), read and reset its recorded requests,
// and compute the token formula independently of the C code, so a test can
// assert exact usage. Used by tests/e2e/mockllm_*.test.mjs and by any gateway
// test that needs an upstream.
import { bin, start } from '../../tests/e2e/lib/proc.mjs';

// Starts mockllm with extra flags; resolves { url, port, proc, requests(),
// reset(), stop() } once it printed "mockllm listening on 127.0.0.1:PORT".
export async function startMock(args = [], { timeoutMs = 10000 } = {}) {
  const proc = start(bin('tools/mockllm/mockllm'), ['--port', '0', ...args]);
  const port = await new Promise((resolve, reject) => {
    let buf = '';
    const t = setTimeout(() => reject(new Error(`mockllm did not report its port:\n${proc.output()}`)), timeoutMs);
    proc.child.stdout.on('data', (d) => {
      buf += d.toString();
      const m = buf.match(/^mockllm (?:listening|refusing) on 127\.0\.0\.1:(\d+)$/m);
      if (m) { clearTimeout(t); resolve(Number(m[1])); }
    });
    proc.exited.then(() => { clearTimeout(t); reject(new Error(`mockllm exited:\n${proc.output()}`)); });
  });
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    port,
    proc,
    // GET /_mock/requests[?key=K] -> { count, requests: [...] }
    async requests(key) {
      const r = await fetch(`${url}/_mock/requests${key === undefined ? '' : `?key=${encodeURIComponent(key)}`}`);
      if (r.status !== 200) throw new Error(`/_mock/requests: HTTP ${r.status}`);
      return r.json();
    },
    async reset(key) {
      const r = await fetch(`${url}/_mock/requests${key === undefined ? '' : `?key=${encodeURIComponent(key)}`}`, { method: 'DELETE' });
      if (r.status !== 200) throw new Error(`DELETE /_mock/requests: HTTP ${r.status}`);
    },
    stop: () => proc.stop('SIGTERM'),
  };
}

// Starts `mockllm --refuse`: a port that is bound but refuses every connect.
export async function startRefusing() {
  return startMock(['--refuse']);
}

const PROMPT_KEYS = new Set(['messages', 'input', 'prompt', 'system', 'instructions', 'tools']);

// The documented prompt formula: max(1, ceil(B / 4)), where B is the UTF-8
// byte length of every string value (not object keys) under the top-level
// keys messages, input, prompt, system, instructions and tools.
export function promptTokens(body) {
  let bytes = 0;
  const walk = (v) => {
    if (typeof v === 'string') bytes += Buffer.byteLength(v, 'utf8');
    else if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') Object.values(v).forEach(walk);
  };
  for (const [k, v] of Object.entries(body)) if (PROMPT_KEYS.has(k)) walk(v);
  return Math.max(1, Math.ceil(bytes / 4));
}

const WORDS = [' Hello', ' from', ' the', ' mock', ' upstream', ' model', ' of', ' Tollgate'];

// The answer text of n output tokens: "Hello from the mock upstream ...".
export function answerText(n) {
  let s = '';
  for (let i = 0; i < n; i++) s += i === 0 ? 'Hello' : WORDS[i % 8];
  return s;
}

export const DEFAULT_TOKENS = 16;
