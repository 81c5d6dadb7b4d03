// Results of one stream, live: the latest frame with its detections, object counts, end-to-end
// latency over time against the budget and its CDF, the latest tasks, and one task's timeline.
// On entering: ListResults (200), then WatchResults from the newest cursor, appending (at most 500
// kept) and refreshing the frame at most every 2 s; leaving the page (or the stream) aborts the call.
import { Code, ConnectError } from "@connectrpc/connect";
import { useEffect, useState } from "preact/hooks";
import type { GetLatestFrameResponse } from "../../../gen/ts/dayu/v1/backend_pb.ts";
import type { TaskSpan } from "../../../gen/ts/dayu/v1/scheduler_pb.ts";
import { TaskOutcome, type TaskRecord } from "../../../gen/ts/dayu/v1/task_pb.ts";
import type { PageProps } from "../app.tsx";
import { backend, isAbort, listInstalledStreams } from "../api.ts";
import { Cdf } from "../components/Cdf.tsx";
import { ErrorBox, Loading } from "../components/common.tsx";
import { FrameView } from "../components/FrameView.tsx";
import { Gantt } from "../components/Gantt.tsx";
import { LineChart } from "../components/LineChart.tsx";
import { fmtConfiguration, fmtMs, fmtPercent, fmtSeconds, fmtTime, quantile, tsMs } from "../format.ts";

const KEEP = 500;
const FRAME_EVERY_MS = 2000;
const RETRY_MS = 3000;
const COUNT_OVER = 20;
const TIMELINE_TRIES = 5; // asked again while not found: spans are exported every 0.5 s
const TIMELINE_RETRY_MS = 1000;

type Live = "connecting" | "live" | "reconnecting";

export function Results({ param }: PageProps) {
  const [streams, setStreams] = useState<string[]>();
  const [streamsError, setStreamsError] = useState<unknown>();
  const streamId = param || streams?.[0] || "";

  useEffect(() => {
    (async () => {
      try {
        const [installed, status] = await Promise.all([listInstalledStreams(), backend.getSystemStatus({})]);
        const ids = new Set([...installed.map((s) => s.streamId), ...status.streams.flatMap((s) => (s.spec ? [s.spec.streamId] : []))]);
        setStreams([...ids].sort());
      } catch (err) {
        setStreamsError(err);
        setStreams([]);
      }
    })();
  }, []);

  return (
    <section>
      <div class="section-head">
        <h2>Results</h2>
        <label class="inline">
          Stream
          <select
            data-testid="results-stream"
            value={streamId}
            onChange={(e) => (location.hash = `#/results/${encodeURIComponent(e.currentTarget.value)}`)}
          >
            {streamId && !streams?.includes(streamId) && <option value={streamId}>{streamId}</option>}
            {streams?.map((id) => (
              <option key={id} value={id}>
                {id}
              </option>
            ))}
          </select>
        </label>
      </div>
      <ErrorBox error={streamsError} testid="results-streams-error" />
      {streams === undefined && !param ? (
        <Loading what="streams" />
      ) : streamId === "" ? (
        <p class="muted" data-testid="results-empty">
          No streams yet: install one on the Streams page.
        </p>
      ) : (
        <StreamResults key={streamId} streamId={streamId} />
      )}
    </section>
  );
}

function StreamResults({ streamId }: { streamId: string }) {
  const [records, setRecords] = useState<TaskRecord[]>();
  const [error, setError] = useState<unknown>();
  const [live, setLive] = useState<Live>("connecting");
  const [frame, setFrame] = useState<GetLatestFrameResponse>();
  const [frameError, setFrameError] = useState<unknown>();
  const [task, setTask] = useState<TaskRecord>();

  useEffect(() => {
    const abort = new AbortController();
    const { signal } = abort;
    let lastFrame = 0;
    let frameTimer: ReturnType<typeof setTimeout> | undefined;

    // At most one GetLatestFrame every 2 s, however fast records come.
    function refreshFrame() {
      if (frameTimer !== undefined) return;
      frameTimer = setTimeout(
        async () => {
          lastFrame = Date.now();
          try {
            setFrame(await backend.getLatestFrame({ streamId }, { signal }));
            setFrameError(undefined);
          } catch (err) {
            if (!isAbort(err, signal)) setFrameError(err);
          }
          frameTimer = undefined;
        },
        Math.max(0, lastFrame + FRAME_EVERY_MS - Date.now()),
      );
    }

    (async () => {
      let cursor = 0n;
      try {
        const reply = await backend.listResults({ streamId, limit: 200 }, { signal });
        const oldestFirst = [...reply.records].reverse();
        cursor = oldestFirst.at(-1)?.cursor ?? 0n;
        setRecords(oldestFirst);
        refreshFrame();
      } catch (err) {
        if (isAbort(err, signal)) return;
        setError(err);
        setRecords([]);
      }
      while (!signal.aborted) {
        try {
          const watch = backend.watchResults({ streamId, afterCursor: cursor }, { signal });
          setLive("live");
          for await (const { record } of watch) {
            setError(undefined);
            if (!record) continue;
            cursor = record.cursor;
            setRecords((prev) => [...(prev ?? []), record].slice(-KEEP));
            refreshFrame();
          }
        } catch (err) {
          if (isAbort(err, signal)) return;
          setError(err);
        }
        // The server ended the stream or the call failed: watch again from the cursor.
        setLive("reconnecting");
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      }
    })();

    return () => {
      abort.abort();
      clearTimeout(frameTimer);
    };
  }, [streamId]);

  if (records === undefined) return <Loading what={`results of ${streamId}`} />;

  const newest = records.at(-1);
  const stageNames = newest?.task?.dag?.stages.map((s) => s.spec?.name ?? "") ?? frame?.stages.map((s) => s.stage) ?? [];
  const budgetS = newest?.task?.latencyBudgetS ?? 0;
  const delivered = records.filter((r) => r.outcome === TaskOutcome.DELIVERED);
  const dropped = records.filter((r) => r.outcome === TaskOutcome.DROPPED);
  const latencies = delivered.map((r) => r.latencyS * 1000);
  const sorted = [...latencies].sort((a, b) => a - b);
  const withinBudget = budgetS > 0 ? latencies.filter((l) => l <= budgetS * 1000).length : NaN;
  const accuracies = delivered.flatMap((r) => (r.accuracy === undefined ? [] : [r.accuracy]));

  return (
    <div data-testid="results" data-stream={streamId}>
      <div class="status-line">
        <span class={`live-dot ${live}`} data-testid="results-live" data-state={live}>
          {live === "live" ? "live" : live === "connecting" ? "connecting…" : "reconnecting…"}
        </span>
        <ErrorBox error={error} testid="results-error" />
      </div>

      <div class="stats" data-testid="results-summary">
        <Stat label="Tasks" value={String(records.length)} />
        <Stat label="Delivered" value={records.length ? fmtPercent((100 * delivered.length) / records.length) : "–"} />
        <Stat label="Dropped" value={String(dropped.length)} />
        <Stat label="Latency p50" value={sorted.length ? fmtMs(quantile(sorted, 0.5)) : "–"} />
        <Stat label="Latency p95" value={sorted.length ? fmtMs(quantile(sorted, 0.95)) : "–"} />
        <Stat label="Within budget" value={latencies.length && budgetS > 0 ? fmtPercent((100 * withinBudget) / latencies.length) : "–"} />
        <Stat label="Budget" value={budgetS > 0 ? fmtSeconds(budgetS) : "–"} />
        <Stat
          label="Accuracy (F1)"
          value={accuracies.length ? (accuracies.reduce((a, b) => a + b, 0) / accuracies.length).toFixed(2) : "–"}
        />
      </div>

      <div class="grid-2">
        <div class="card">
          <h3>Latest frame</h3>
          {frame && frame.jpeg.length > 0 ? (
            <FrameView testid="results-frame" frame={frame} stages={stageNames} />
          ) : frameError ? null : (
            <div class="chart-empty" data-testid="results-frame-empty">
              No frame yet.
            </div>
          )}
          <FrameError error={frameError} />
          {newest?.task?.configuration && (
            <div class="muted small" data-testid="results-configuration">
              Configuration of the latest task: {fmtConfiguration(newest.task.configuration)}
            </div>
          )}
        </div>
        <div class="card">
          <h3>Objects</h3>
          <ObjectCounts records={delivered} />
        </div>
      </div>

      <div class="grid-2">
        <div class="card">
          <h3>End-to-end latency</h3>
          <LineChart
            testid="results-latency-chart"
            series={[
              {
                name: "latency",
                colour: "#2563eb",
                points: delivered.map((r) => ({ x: tsMs(r.storedAt), y: r.latencyS * 1000 })),
              },
            ]}
            markers={dropped.map((r) => ({
              x: tsMs(r.storedAt),
              y: (r.latencyS || budgetS) * 1000,
              colour: "#dc2626",
              title: `task ${r.task?.sequence ?? ""} dropped: ${r.reason}`,
            }))}
            hLine={budgetS > 0 ? { value: budgetS * 1000, label: `budget ${fmtSeconds(budgetS)}`, colour: "#dc2626" } : undefined}
            fmtX={(x) => new Date(x).toLocaleTimeString("en-GB", { hour12: false })}
            fmtY={fmtMs}
            empty="No tasks yet."
          />
          {dropped.length > 0 && <div class="muted small">× dropped task ({dropped.length})</div>}
        </div>
        <div class="card">
          <h3>Latency CDF</h3>
          <Cdf
            testid="results-latency-cdf"
            values={latencies}
            fmtX={fmtMs}
            vLine={budgetS > 0 ? { value: budgetS * 1000, label: "budget", colour: "#dc2626" } : undefined}
          />
        </div>
      </div>

      <div class="card">
        <h3>Latest tasks</h3>
        <TaskTable records={records.slice(-15).reverse()} selected={task} onSelect={setTask} />
      </div>

      <div class="card">
        <h3>Task timeline{task ? `: task ${task.task?.sequence ?? ""}` : ""}</h3>
        {task ? (
          <Timeline key={task.task?.rootId} record={task} stages={stageNames} />
        ) : (
          <p class="muted" data-testid="results-timeline-hint">
            Pick a task above to see where its time went.
          </p>
        )}
      </div>
    </div>
  );
}

function Stat(props: { label: string; value: string }) {
  return (
    <div class="stat">
      <div class="stat-value">{props.value}</div>
      <div class="stat-label">{props.label}</div>
    </div>
  );
}

function FrameError({ error }: { error: unknown }) {
  if (error === undefined) return null;
  if (error instanceof ConnectError && error.code === Code.NotFound) {
    return (
      <div class="chart-empty" data-testid="results-frame-empty">
        No frame delivered yet.
      </div>
    );
  }
  return <ErrorBox error={error} testid="results-frame-error" />;
}

/** Per stage and label: how many on the newest task's last frame, and per frame over the last tasks. */
function ObjectCounts({ records }: { records: TaskRecord[] }) {
  const recent = records.slice(-COUNT_OVER);
  const newest = recent.at(-1);
  if (!newest) return <div class="chart-empty" data-testid="results-counts">No delivered tasks yet.</div>;
  const rows = new Map<string, { stage: string; label: string; latest: number; total: number }>();
  const frames = new Map<string, number>();
  for (const r of recent) {
    for (const st of r.task?.dag?.stages ?? []) {
      const stage = st.spec?.name ?? "";
      frames.set(stage, (frames.get(stage) ?? 0) + st.results.length);
      const last = st.results.reduce<bigint>((m, f) => (f.frameIndex > m ? f.frameIndex : m), -1n);
      for (const f of st.results) {
        for (const d of f.detections) {
          const key = `${stage}\u0000${d.label}`;
          const row = rows.get(key) ?? { stage, label: d.label || "(no label)", latest: 0, total: 0 };
          row.total += 1;
          if (r === newest && f.frameIndex === last) row.latest += 1;
          rows.set(key, row);
        }
      }
    }
  }
  if (rows.size === 0) return <div class="chart-empty" data-testid="results-counts">Nothing found in the last {recent.length} tasks.</div>;
  return (
    <div class="scroll-y">
      <table data-testid="results-counts" class="compact">
        <thead>
          <tr>
            <th>Stage</th>
            <th>Label</th>
            <th class="num">Latest frame</th>
            <th class="num">Per frame (last {recent.length} tasks)</th>
          </tr>
        </thead>
        <tbody>
          {[...rows.values()].map((r) => (
            <tr key={`${r.stage}/${r.label}`} data-testid="count-row" data-label={r.label}>
              <td>{r.stage}</td>
              <td>{r.label}</td>
              <td class="num">{r.latest}</td>
              <td class="num">{(r.total / Math.max(1, frames.get(r.stage) ?? 0)).toFixed(2)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function TaskTable(props: { records: TaskRecord[]; selected?: TaskRecord; onSelect: (r: TaskRecord) => void }) {
  if (props.records.length === 0) return <div class="chart-empty" data-testid="results-records">No tasks yet.</div>;
  return (
    <table data-testid="results-records" class="compact">
      <thead>
        <tr>
          <th class="num">Task</th>
          <th>Stored</th>
          <th>Outcome</th>
          <th class="num">Latency</th>
          <th class="num">F1</th>
          <th>Configuration</th>
          <th>Stages ran on</th>
          <th />
        </tr>
      </thead>
      <tbody>
        {props.records.map((r) => {
          const t = r.task;
          const rootId = t?.rootId ?? "";
          const droppedTask = r.outcome === TaskOutcome.DROPPED;
          return (
            <tr
              key={r.cursor.toString()}
              class={props.selected?.cursor === r.cursor ? "selected" : ""}
              data-testid="record-row"
              data-root={rootId}
              data-outcome={droppedTask ? "dropped" : "delivered"}
            >
              <td class="num">{t?.sequence.toString() ?? "–"}</td>
              <td>{fmtTime(r.storedAt)}</td>
              <td>
                {droppedTask ? <span class="badge bad" title={r.reason}>dropped</span> : <span class="badge good">delivered</span>}
                {droppedTask && r.reason && <div class="muted small">{r.reason}</div>}
              </td>
              <td class="num">{droppedTask && r.latencyS <= 0 ? "–" : fmtSeconds(r.latencyS)}</td>
              <td class="num">{r.accuracy === undefined ? "–" : r.accuracy.toFixed(2)}</td>
              <td class="small">{fmtConfiguration(t?.configuration)}</td>
              <td class="small">
                {t?.dag?.stages.map((s) => `${s.spec?.name ?? "?"}@${s.executedOn || s.node || "?"}`).join(", ")}
              </td>
              <td>
                <button data-testid="record-timeline" disabled={!rootId} onClick={() => props.onSelect(r)}>
                  Timeline
                </button>
              </td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}

function Timeline(props: { record: TaskRecord; stages: string[] }) {
  const rootId = props.record.task?.rootId ?? "";
  const [spans, setSpans] = useState<TaskSpan[]>();
  const [error, setError] = useState<unknown>();
  useEffect(() => {
    const abort = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    // A task's spans reach the scheduler in OTLP batches, a moment after its record: a timeline not
    // found yet is asked again a few times before the error shows.
    const ask = (triesLeft: number) => {
      backend
        .getTaskTimeline({ rootId }, { signal: abort.signal })
        .then((reply) => setSpans(reply.spans))
        .catch((err) => {
          if (isAbort(err, abort.signal)) return;
          if (triesLeft > 0 && ConnectError.from(err).code === Code.NotFound) {
            timer = setTimeout(() => ask(triesLeft - 1), TIMELINE_RETRY_MS);
          } else {
            setError(err);
          }
        });
    };
    setSpans(undefined);
    setError(undefined);
    ask(TIMELINE_TRIES);
    return () => {
      abort.abort();
      clearTimeout(timer);
    };
  }, [rootId]);
  if (error !== undefined) return <ErrorBox error={error} testid="results-timeline-error" />;
  if (spans === undefined) return <Loading what="the timeline" />;
  return <Gantt testid="results-gantt" spans={spans} stages={props.stages} />;
}
