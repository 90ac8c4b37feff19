// The Echo service (rpc/testdata/echo.proto) implemented with @grpc/grpc-js,
// the official Node gRPC server: an independent server for rpc/'s client
// (tests/e2e/rpc_client_interop.test.mjs) and the baseline for
// rpc/testing/rpc_bench. Prints the port on stdout; exits 0 on SIGTERM.
//   node echo_server_node.mjs [--port P] [--name NAME]
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const here = path.dirname(fileURLToPath(import.meta.url));
const def = protoLoader.loadSync(path.join(here, '../testdata/echo.proto'), { longs: Number, defaults: true });
const Echo = grpc.loadPackageDefinition(def).tollgate.test.v1.Echo;
const arg = (k, d) => { const i = process.argv.indexOf(k); return i > 0 ? process.argv[i + 1] : d; };
const name = arg('--name', 'node');

function deadlineMs(call) {
  const d = call.getDeadline();
  if (d === Infinity || d === undefined) return -1;
  return Math.max(0, (d instanceof Date ? d.getTime() : Number(d)) - Date.now());
}

const server = new grpc.Server();
server.addService(Echo.service, {
  Say(call, cb) {
    const { text, echoHeader, delayMs } = call.request;
    const hv = echoHeader ? call.metadata.get(echoHeader)[0] : undefined;
    const reply = () => {
      call.sendMetadata(new grpc.Metadata());
      const trailer = new grpc.Metadata();
      trailer.set('x-echo-trailer', 'done');
      cb(null, { text, headerValue: hv ? String(hv) : '', peer: call.getPeer(), deadlineMs: deadlineMs(call) },
        trailer);
    };
    if (delayMs > 0) setTimeout(reply, delayMs); else reply();
  },
  Fail(call, cb) {
    cb({ code: call.request.code, details: call.request.message });
  },
  Count(call) {
    const { n, payloadBytes } = call.request;
    const payload = Buffer.alloc(payloadBytes, 'x');
    let i = 0;
    const pump = () => {
      while (i < n) {
        if (call.cancelled) return;
        if (!call.write({ text: 'count', index: i++, payload })) { call.once('drain', pump); return; }
      }
      call.end();
    };
    pump();
  },
  Watch(call) {
    let i = 0;
    const t = setInterval(() => call.write({ text: name, index: i++ }), 20);
    call.on('cancelled', () => clearInterval(t));
    call.on('close', () => clearInterval(t));
  },
  Stats(call, cb) {
    cb(null, {});
  },
});
server.bindAsync(`127.0.0.1:${arg('--port', '0')}`, grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) { console.error(err.message); process.exit(1); }
  console.log(port);
});
process.on('SIGTERM', () => { server.forceShutdown(); process.exit(0); });
