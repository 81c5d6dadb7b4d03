// The system, live (WatchSystemStatus every 2 s): each node's resources and queues, each link's
// bandwidth over time (probed by the monitors, and as the traces show it), which components answer,
// and each stream's current decision (configuration, where each stage runs) and recent decisions.
import { useEffect, useState } from "preact/hooks";
import type { GetSystemStatusResponse } from "../../../gen/ts/dayu/v1/backend_pb.ts";
import type { NodeResources } from "../../../gen/ts/dayu/v1/resources_pb.ts";
import type { StreamSchedulingStats } from "../../../gen/ts/dayu/v1/scheduler_pb.ts";
import type { Decision } from "../../../gen/ts/dayu/v1/decision_pb.ts";
import { backend, isAbort } from "../api.ts";
import { Bar, ErrorBox, Loading } from "../components/common.tsx";
import { LineChart, type Point } from "../components/LineChart.tsx";
import { fmtBytes, fmtConfiguration, fmtDateTime, fmtMbps, fmtPercent, fmtSeconds, fmtTime, tsMs } from "../format.ts";

const INTERVAL_S = 2;
const KEEP_POINTS = 150;
const RETRY_MS = 3000;

interface LinkHistory {
  probed: Point[];
  traced: Point[];
}

type Live = "connecting" | "live" | "reconnecting";

export function System() {
  const [status, setStatus] = useState<GetSystemStatusResponse>();
  const [links, setLinks] = useState<Map<string, LinkHistory>>(new Map());
  const [live, setLive] = useState<Live>("connecting");
  const [error, setError] = useState<unknown>();

  useEffect(() => {
    const abort = new AbortController();
    const { signal } = abort;
    (async () => {
      while (!signal.aborted) {
        try {
          for await (const reply of backend.watchSystemStatus({ intervalS: INTERVAL_S }, { signal })) {
            const s = reply.status;
            if (!s) continue;
            setLive("live");
            setError(undefined);
            setStatus(s);
            setLinks((prev) => appendLinks(prev, s));
          }
        } catch (err) {
          if (isAbort(err, signal)) return;
          setError(err);
        }
        setLive("reconnecting");
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      }
    })();
    return () => abort.abort();
  }, []);

  return (
    <>
      <section>
        <div class="section-head">
          <h2>System</h2>
          <span class={`live-dot ${live}`} data-testid="system-live" data-state={live}>
            {live === "live" ? `live · read ${fmtTime(status?.readAt)}` : live === "connecting" ? "connecting…" : "reconnecting…"}
          </span>
        </div>
        <ErrorBox error={error} testid="system-error" />
        {status === undefined ? !error && <Loading what="the system status" /> : <Nodes nodes={status.nodes} />}
      </section>
      {status && (
        <>
          <section>
            <h2>Links</h2>
            <LinkCharts links={links} />
          </section>
          <section>
            <h2>
              Components{" "}
              <span class="muted small">
                {status.components.filter((c) => c.up).length} of {status.components.length} up
              </span>
            </h2>
            <Components status={status} />
          </section>
          <section>
            <h2>Scheduling</h2>
            {status.scheduling.length === 0 ? (
              <p class="muted" data-testid="system-scheduling-empty">
                The scheduler knows no stream.
              </p>
            ) : (
              <div data-testid="system-scheduling">
                {status.scheduling.map((s) => (
                  <StreamScheduling key={s.streamId} stats={s} />
                ))}
              </div>
            )}
          </section>
        </>
      )}
    </>
  );
}

/** Adds this status's link bandwidths to the history, keeping the last KEEP_POINTS of each. */
function appendLinks(prev: Map<string, LinkHistory>, s: GetSystemStatusResponse): Map<string, LinkHistory> {
  const at = Number.isFinite(tsMs(s.readAt)) ? tsMs(s.readAt) : Date.now();
  const next = new Map(prev);
  const add = (from: string, to: string, kind: keyof LinkHistory, mbps: number) => {
    const key = `${from} → ${to}`;
    const h = next.get(key) ?? { probed: [], traced: [] };
    next.set(key, { ...h, [kind]: [...h[kind], { x: at, y: mbps }].slice(-KEEP_POINTS) });
  };
  for (const n of s.nodes) for (const l of n.links) add(l.fromNode || n.node, l.toNode, "probed", l.bandwidthMbps);
  for (const l of s.tracedLinks) add(l.fromNode, l.toNode, "traced", l.bandwidthMbps);
  return next;
}

function Nodes({ nodes }: { nodes: NodeResources[] }) {
  if (nodes.length === 0) return <p class="muted">No node has reported yet.</p>;
  const maxQueue = Math.max(10, ...nodes.flatMap((n) => Object.values(n.queueLengths)));
  return (
    <table data-testid="system-nodes">
      <thead>
        <tr>
          <th>Node</th>
          <th>CPU</th>
          <th>Memory</th>
          <th>GPUs</th>
          <th>Queues</th>
          <th>Measured</th>
        </tr>
      </thead>
      <tbody>
        {nodes.map((n) => {
          const cores = n.cpuLimitCores > 0 ? `${n.cpuLimitCores} of ${n.cpuCount} cores` : `${n.cpuCount} cores`;
          const memory = n.memoryTotalBytes > 0n ? Number(n.memoryUsedBytes) / Number(n.memoryTotalBytes) : 0;
          const queues = Object.entries(n.queueLengths).sort(([a], [b]) => a.localeCompare(b));
          return (
            <tr key={n.node} data-testid="node-row" data-node={n.node} class={n.stale ? "stale" : ""}>
              <td>
                {n.node}
                {n.stale && <div class="badge warn">stale</div>}
              </td>
              <td class="meter">
                <Bar fraction={n.cpuPercent / 100} />
                <span data-testid="node-cpu">{fmtPercent(n.cpuPercent)}</span>
                <div class="muted small">{cores}</div>
              </td>
              <td class="meter">
                <Bar fraction={memory} />
                <span data-testid="node-memory">
                  {fmtBytes(n.memoryUsedBytes)} / {fmtBytes(n.memoryTotalBytes)}
                </span>
              </td>
              <td>
                {n.gpus.length === 0 ? (
                  <span class="muted">none</span>
                ) : (
                  n.gpus.map((g) => (
                    <div key={g.index} class="meter" data-testid="node-gpu">
                      <span class="small">
                        {g.index}: {g.name}
                      </span>
                      <Bar fraction={g.utilizationPercent / 100} title="utilization" />
                      <span>{fmtPercent(g.utilizationPercent)}</span>
                      <span class="muted small">
                        {fmtBytes(g.memoryUsedBytes)} / {fmtBytes(g.memoryTotalBytes)}
                      </span>
                    </div>
                  ))
                )}
              </td>
              <td>
                {queues.length === 0 ? (
                  <span class="muted">–</span>
                ) : (
                  queues.map(([kind, length]) => (
                    <div key={kind} class="meter queue" data-testid="node-queue" data-kind={kind}>
                      <span class="small">{kind}</span>
                      <Bar fraction={length / maxQueue} />
                      <span>{length}</span>
                    </div>
                  ))
                )}
              </td>
              <td class="small">{fmtTime(n.measuredAt)}</td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}

function LinkCharts({ links }: { links: Map<string, LinkHistory> }) {
  if (links.size === 0) return <p class="muted">No link measured yet.</p>;
  const keys = [...links.keys()].sort();
  return (
    <div class="grid-2" data-testid="system-links">
      {keys.map((key) => {
        const h = links.get(key)!;
        const last = h.probed.at(-1) ?? h.traced.at(-1);
        return (
          <div key={key} class="card" data-testid="system-link" data-link={key}>
            <h3>
              {key} <span class="muted small">{last ? fmtMbps(last.y) : ""}</span>
            </h3>
            <LineChart
              height={160}
              series={[
                { name: "probed", colour: "#2563eb", points: h.probed },
                { name: "traced", colour: "#d97706", points: h.traced },
              ].filter((s) => s.points.length > 0)}
              fmtX={(x) => new Date(x).toLocaleTimeString("en-GB", { hour12: false })}
              fmtY={(y) => `${y} Mbit/s`}
            />
          </div>
        );
      })}
    </div>
  );
}

function Components({ status }: { status: GetSystemStatusResponse }) {
  return (
    <table data-testid="system-components" class="compact">
      <thead>
        <tr>
          <th>Component</th>
          <th>Node</th>
          <th>Role</th>
          <th>Address</th>
          <th>State</th>
        </tr>
      </thead>
      <tbody>
        {status.components.map((c) => (
          <tr
            key={`${c.component}/${c.node}/${c.role}/${c.address}`}
            data-testid="component-row"
            data-component={c.component}
            data-node={c.node}
            data-up={String(c.up)}
          >
            <td>{c.component}</td>
            <td>{c.node}</td>
            <td>{c.role || "–"}</td>
            <td class="mono small">{c.address}</td>
            <td>
              {c.up ? <span class="badge good">up</span> : <span class="badge bad">down</span>}
              {c.detail && <div class="muted small">{c.detail}</div>}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function StreamScheduling({ stats }: { stats: StreamSchedulingStats }) {
  const [all, setAll] = useState(false);
  const d = stats.current;
  const history = [...stats.history].reverse();
  const shown = all ? history : history.slice(0, 8);
  return (
    <div class="card" data-testid="scheduling-stream" data-stream={stats.streamId}>
      <h3>
        {stats.streamId} <span class="muted small">policy {stats.policy}</span>
        {d?.paused && <span class="badge warn">paused</span>}
      </h3>
      <div class="muted small">
        {stats.decisions.toString()} decisions · decision time p50 {fmtSeconds(stats.decisionTimeP50S)}, p95{" "}
        {fmtSeconds(stats.decisionTimeP95S)} · {stats.feedbackReceived.toString()} feedback records · registered{" "}
        {fmtDateTime(stats.registeredAt)}
      </div>
      {d ? (
        <div class="decision" data-testid="scheduling-current">
          <div>
            <strong>Now (v{d.version.toString()}):</strong> {fmtConfiguration(d.configuration)}
          </div>
          <Placement decision={d} />
          {d.reason && <div class="reason">{d.reason}</div>}
        </div>
      ) : (
        <p class="muted">No decision yet.</p>
      )}
      {history.length > 0 && (
        <table class="compact" data-testid="scheduling-history">
          <thead>
            <tr>
              <th>Made</th>
              <th class="num">Version</th>
              <th>Configuration</th>
              <th>Placement</th>
              <th>Reason</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((h) => (
              <tr key={`${h.epoch}-${h.version}`} data-testid="decision-row" data-version={h.version.toString()}>
                <td class="small">{fmtTime(h.madeAt)}</td>
                <td class="num">
                  {h.version.toString()}
                  {h.paused && <span class="badge warn">paused</span>}
                </td>
                <td class="small">{fmtConfiguration(h.configuration)}</td>
                <td class="small">{placementText(h)}</td>
                <td class="small">{h.reason}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {history.length > shown.length || all ? (
        <button class="link" onClick={() => setAll(!all)}>
          {all ? "Show fewer" : `Show all ${history.length}`}
        </button>
      ) : null}
    </div>
  );
}

function Placement({ decision }: { decision: Decision }) {
  const entries = Object.entries(decision.placement).sort(([a], [b]) => a.localeCompare(b));
  if (entries.length === 0) return null;
  return (
    <div class="placement" data-testid="scheduling-placement">
      {entries.map(([stage, node]) => (
        <span key={stage} class="chip" data-stage={stage} data-node={node}>
          {stage} → <strong>{node}</strong>
        </span>
      ))}
    </div>
  );
}

function placementText(d: Decision): string {
  return Object.entries(d.placement)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([stage, node]) => `${stage}@${node}`)
    .join(", ");
}
