// Dayu from TypeScript: lists the pipelines, reads the scheduler's statistics, sets a stream's
// policy and follows its decisions for a few seconds; the last line printed is one JSON object.
//
//   npm ci && npm run build
//   node dist/examples/dayu-example.js --backend HOST:PORT --scheduler HOST:PORT --stream cam-1 \
//     [--token TOKEN] [--watch-seconds 3] [--policy fixed] [--ca ca.pem --cert client.pem \
//     --key client.key [--server-name dayu-mesh]]
//
// Every call carries `authorization: Bearer TOKEN` (--token, by default $DAYU_TOKEN): the backend's
// calls need a token, the scheduler's SetPolicy an admin one (`dayu up` writes the mesh's tokens to
// .dayu/tokens.yaml).
import { parseArgs } from "node:util";
import {
  BackendService,
  Code,
  ConnectError,
  createClient,
  createDayuTransport,
  DAYU_MESH_SERVER_NAME,
  SchedulerService,
  type CallOptions,
  type DayuTls,
} from "@dayu/client";

/** Where --token comes from when it is not given. */
const TOKEN_ENV = "DAYU_TOKEN";

const USAGE =
  "usage: dayu-example --backend HOST:PORT --scheduler HOST:PORT --stream STREAM_ID " +
  `[--token TOKEN (default $${TOKEN_ENV})] [--watch-seconds N] [--policy NAME] ` +
  "[--ca FILE --cert FILE --key FILE [--server-name NAME]]";

interface Options {
  backend: string;
  scheduler: string;
  stream: string;
  token: string;
  watchSeconds: number;
  policy: string;
  tls?: DayuTls;
}

class UsageError extends Error {}

/**
 * `--token VALUE` as `--token=VALUE`: a token may begin with "-" (a random one does, now and then),
 * which parseArgs would take for an option.
 */
function tokenJoined(argv: string[]): string[] {
  const joined: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    joined.push(argv[i] === "--token" && i + 1 < argv.length ? `--token=${argv[++i]}` : argv[i]);
  }
  return joined;
}

function parseOptions(argv: string[]): Options {
  let values;
  try {
    ({ values } = parseArgs({
      args: tokenJoined(argv),
      strict: true,
      allowPositionals: false,
      options: {
        backend: { type: "string" },
        scheduler: { type: "string" },
        stream: { type: "string" },
        token: { type: "string" },
        "watch-seconds": { type: "string", default: "3" },
        policy: { type: "string", default: "fixed" },
        ca: { type: "string" },
        cert: { type: "string" },
        key: { type: "string" },
        "server-name": { type: "string", default: DAYU_MESH_SERVER_NAME },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const { backend, scheduler, stream, ca, cert, key } = values;
  if (!backend || !scheduler || !stream) {
    throw new UsageError("--backend, --scheduler and --stream are required");
  }
  const token = values.token || process.env[TOKEN_ENV] || "";
  if (!token) {
    throw new UsageError(
      `no token: the backend's calls and SetPolicy need one; give --token or set ${TOKEN_ENV} ` +
        "(an admin token of the mesh: dayu up writes them to .dayu/tokens.yaml)",
    );
  }
  const watchSeconds = Number(values["watch-seconds"]);
  if (!Number.isFinite(watchSeconds) || watchSeconds <= 0) {
    throw new UsageError(`--watch-seconds must be a positive number, not ${values["watch-seconds"]}`);
  }
  let tls: DayuTls | undefined;
  if (ca || cert || key) {
    if (!ca || !cert || !key) {
      throw new UsageError("mutual TLS needs all of --ca, --cert and --key");
    }
    tls = { ca, cert, key, serverName: values["server-name"] };
  }
  return { backend, scheduler, stream, token, watchSeconds, policy: values.policy!, tls };
}

async function run(opts: Options): Promise<void> {
  const mode = opts.tls ? `mutual TLS (server name ${opts.tls.serverName})` : "plaintext";
  console.log(`backend ${opts.backend}, scheduler ${opts.scheduler}, ${mode}`);
  const backend = createClient(BackendService, createDayuTransport(opts.backend, opts.tls));
  const scheduler = createClient(SchedulerService, createDayuTransport(opts.scheduler, opts.tls));
  // The token, as a request header (gRPC metadata) of every call. It travels in clear on a
  // plaintext connection: use TLS anywhere but loopback.
  const auth: CallOptions = { headers: { authorization: `Bearer ${opts.token}` } };

  // 1) Every pipeline, two per page to show the paging.
  const pipelines: string[] = [];
  let pageToken = "";
  let page = 0;
  do {
    const reply = await backend.listPipelines({ pageSize: 2, pageToken }, auth);
    page += 1;
    for (const p of reply.pipelines) {
      console.log(`pipeline ${p.name} (page ${page}, ${p.stages.length} stages)`);
      pipelines.push(p.name);
    }
    pageToken = reply.nextPageToken;
  } while (pageToken !== "");

  // 2) The scheduler's statistics, every page.
  const statsStreams: string[] = [];
  pageToken = "";
  do {
    const reply = await scheduler.getSchedulerStats({ pageToken }, auth);
    for (const s of reply.streams) {
      console.log(
        `stream ${s.streamId}: policy ${s.policy}, ${s.decisions} decisions, ` +
          `decision time p50 ${(s.decisionTimeP50S * 1000).toFixed(3)} ms`,
      );
      statsStreams.push(s.streamId);
    }
    pageToken = reply.nextPageToken;
  } while (pageToken !== "");

  // 3) The stream's policy, with no parameters (an empty google.protobuf.Struct).
  const set = await scheduler.setPolicy(
    { streamId: opts.stream, policy: { name: opts.policy, params: {} } },
    auth,
  );
  console.log(`policy of ${opts.stream} set to ${opts.policy}: decision version ${set.decision?.version ?? 0n}`);

  // 4) Its decisions, for --watch-seconds: the first is the current one; the deadline ends the call.
  let decisions = 0;
  let lastVersion = 0n;
  try {
    const stream = scheduler.watchDecisions(
      { streamId: opts.stream },
      { ...auth, timeoutMs: Math.round(opts.watchSeconds * 1000) },
    );
    for await (const reply of stream) {
      const d = reply.decision;
      if (!d) continue;
      decisions += 1;
      lastVersion = d.version;
      console.log(`decision ${d.streamId} v${d.version}: ${d.reason || "-"}`);
    }
  } catch (err) {
    // The deadline passing is how the watch ends; anything else is an error.
    if (!(err instanceof ConnectError && err.code === Code.DeadlineExceeded)) throw err;
  }
  console.log(`watched ${decisions} decisions in ${opts.watchSeconds} s`);

  console.log(
    JSON.stringify({
      pipelines,
      stats_streams: statsStreams,
      policy: opts.policy,
      decisions,
      last_version: Number(lastVersion),
    }),
  );
}

async function main(): Promise<number> {
  let opts: Options;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    console.error(`dayu-example: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  try {
    await run(opts);
    return 0;
  } catch (err) {
    const e = ConnectError.from(err);
    const hint =
      e.code === Code.Unauthenticated
        ? ` (is --token or $${TOKEN_ENV} one of the mesh's tokens? dayu up writes them to .dayu/tokens.yaml)`
        : e.code === Code.PermissionDenied
          ? " (SetPolicy needs an admin token)"
          : "";
    console.error(`dayu-example: error: ${Code[e.code]}: ${e.rawMessage}${hint}`);
    return 1;
  }
}

process.exitCode = await main();
