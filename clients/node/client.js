#!/usr/bin/env node
// A small Node.js client for the WhatsApp identity gateway.
//
// It exists to prove that the gRPC contract works outside Python: it loads the repo's own
// identity.proto at run time (no generated code, no build step), and decodes the gateway's rich
// error details (google.rpc.Status / google.rpc.ErrorInfo in `grpc-status-details-bin`) the way
// any non-Python caller would have to.
//
//   node client.js [--target HOST:PORT] [--timeout SECONDS] get WA_ID [--bypass-cache]
//   node client.js [--target HOST:PORT] [--timeout SECONDS] ack WA_ID HASH
//
// Every run prints exactly ONE JSON object on stdout, so scripts and tests can parse it:
//   success    the response, with proto field names (wa_id, cache_hit, fetch_time, ...) and
//              Timestamps as RFC 3339 strings, like the Python `identity-gateway get` prints;
//   RPC error  {"code": "NOT_FOUND", "message": "...", "errorInfo": {reason, domain, metadata}}.
// Exit code: 0 on success, 1 on an RPC error, 2 on bad usage (usage goes to stderr).
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// Options shared by both proto loads. keepCase keeps the proto's snake_case field names (the
// names the spec and the other clients use); defaults prints false/"" fields, so `acknowledged:
// false` is visible rather than missing; longs as strings because Timestamp.seconds is an int64.
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true };

// The contract, straight from the repo's protos/ (the single source of truth). Its import of
// google/protobuf/timestamp.proto is served by the well-known types that protobufjs bundles and
// proto-loader uses, so the repo's protos/ is the only include dir needed.
const REPO_PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const identityPackage = grpc.loadPackageDefinition(
  protoLoader.loadSync('whatsapp/identity/v1/identity.proto', {
    ...LOADER_OPTIONS,
    includeDirs: [REPO_PROTOS],
  }),
);
const { IdentityService } = identityPackage.whatsapp.identity.v1;

// google.rpc.Status and ErrorInfo are vendored under clients/node/protos/ (Apache-2.0, from
// googleapis), because the repo's top-level protos/ holds only this project's own contract.
// proto-loader gives each message a protobufjs-backed `deserialize`, which is all we need.
const RPC_TYPES = protoLoader.loadSync(
  ['google/rpc/status.proto', 'google/rpc/error_details.proto'],
  { ...LOADER_OPTIONS, includeDirs: [path.join(__dirname, 'protos')] },
);
const ERROR_INFO_TYPE_URL = 'type.googleapis.com/google.rpc.ErrorInfo';

const USAGE = `usage: client.js [--target HOST:PORT] [--timeout SECONDS] get WA_ID [--bypass-cache]
       client.js [--target HOST:PORT] [--timeout SECONDS] ack WA_ID HASH`;

// A google.protobuf.Timestamp as RFC 3339 in UTC, as protobuf's JSON mapping writes it:
// fractional seconds only when present, in groups of 3 digits.
function timestampToString(timestamp) {
  if (!timestamp) return null;
  const whole = new Date(Number(timestamp.seconds) * 1000).toISOString().slice(0, 19);
  let fraction = '';
  if (timestamp.nanos) {
    fraction = '.' + String(timestamp.nanos).padStart(9, '0');
    while (fraction.endsWith('000')) fraction = fraction.slice(0, -3);
  }
  return `${whole}${fraction}Z`;
}

function describeGetIdentity(response) {
  const { identity } = response;
  return {
    identity: identity && {
      wa_id: identity.wa_id,
      hash: identity.hash,
      create_time: timestampToString(identity.create_time),
      acknowledged: identity.acknowledged,
    },
    cache_hit: response.cache_hit,
    fetch_time: timestampToString(response.fetch_time),
  };
}

// The ErrorInfo inside the call's `grpc-status-details-bin` trailer, or null when there is none.
// The trailer is a serialized google.rpc.Status whose `details` are google.protobuf.Any; the
// gateway always sends exactly one ErrorInfo among them (spec 4.5).
function decodeErrorInfo(error) {
  const [raw] = error.metadata ? error.metadata.get('grpc-status-details-bin') : [];
  if (!raw) return null;
  const status = RPC_TYPES['google.rpc.Status'].deserialize(raw);
  // A proxy that rewrites the status but forwards the old trailer would make the details lie;
  // trust them only when they agree with the call's own code, as grpc-status libraries do.
  if (status.code !== error.code) return null;
  const any = status.details.find((detail) => detail.type_url === ERROR_INFO_TYPE_URL);
  if (!any) return null;
  const info = RPC_TYPES['google.rpc.ErrorInfo'].deserialize(any.value);
  return { reason: info.reason, domain: info.domain, metadata: { ...info.metadata } };
}

function describeError(error) {
  let errorInfo = null;
  try {
    errorInfo = decodeErrorInfo(error);
  } catch {
    // Undecodable details must not hide the code and message, which are still true.
  }
  return { code: grpc.status[error.code], message: error.details, errorInfo };
}

function parseCommandLine(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      target: { type: 'string', default: '127.0.0.1:50051' },
      timeout: { type: 'string', default: '10' },
      'bypass-cache': { type: 'boolean', default: false },
    },
  });
  const [command, ...rest] = positionals;
  const timeout = Number(values.timeout);
  if (!(timeout > 0)) throw new Error('--timeout must be a positive number of seconds');
  if (command === 'get' && rest.length === 1) {
    return {
      ...values,
      timeout,
      method: 'GetIdentity',
      request: { wa_id: rest[0], bypass_cache: values['bypass-cache'] },
      describe: describeGetIdentity,
    };
  }
  if (command === 'ack' && rest.length === 2 && !values['bypass-cache']) {
    return {
      ...values,
      timeout,
      method: 'AcknowledgeIdentity',
      request: { wa_id: rest[0], hash: rest[1] },
      describe: () => ({}), // AcknowledgeIdentityResponse has no fields
    };
  }
  throw new Error(`unknown command or wrong arguments: ${positionals.join(' ')}`);
}

function main() {
  let options;
  try {
    options = parseCommandLine(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`${error.message}\n${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  // Insecure on purpose: in the mesh, TLS is the sidecars' job; locally, `make run` is plaintext.
  const client = new IdentityService(options.target, grpc.credentials.createInsecure());
  const deadline = new Date(Date.now() + options.timeout * 1000);
  client[options.method](options.request, { deadline }, (error, response) => {
    client.close();
    const output = error ? describeError(error) : options.describe(response);
    process.stdout.write(JSON.stringify(output, null, 2) + '\n');
    process.exitCode = error ? 1 : 0;
  });
}

main();
