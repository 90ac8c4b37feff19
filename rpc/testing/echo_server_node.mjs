// Baseline for rpc/testing/rpc_bench: the Echo service's Say and Count
// implemented with @grpc/grpc-js (the official Node gRPC server), so the C
// server's numbers come with a reference measured in the same run by the
// same client. Prints the port on stdout; exits on SIGTERM.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const here = path.dirname(fileURLToPath(import.meta.url));
const def = protoLoader.loadSync(path.join(here, '../testdata/echo.proto'), { longs: Number, defaults: true });
const Echo = grpc.loadPackageDefinition(def).tollgate.test.v1.Echo;

const server = new grpc.Server();
server.addService(Echo.service, {
  Say(call, cb) {
    const { text, echoHeader } = call.request;
    const hv = echoHeader ? call.metadata.get(echoHeader)[0] : undefined;
    cb(null, { text, headerValue: hv ? String(hv) : '', peer: call.getPeer(), deadlineMs: -1 });
  },
  Count(call) {
    const { n, payloadBytes } = call.request;
    const payload = Buffer.alloc(payloadBytes, 'x');
    let i = 0;
    const pump = () => {
      while (i < n) {
        if (call.cancelled) return;
        const ok = call.write({ text: 'count', index: i++, payload });
        if (!ok) { call.once('drain', pump); return; }
      }
      call.end();
    };
    pump();
  },
});
server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) { console.error(err); process.exit(1); }
  console.log(port);
});
process.on('SIGTERM', () => server.tryShutdown(() => process.exit(0)));
