// One task's timeline: a row per node and component, a bar per span, the time axis in ms from the
// first span's start; bars are coloured by stage (grey for hops of the whole task).
import type { TaskSpan } from "../../../gen/ts/dayu/v1/scheduler_pb.ts";
import { colourFor, fmtMs, tsMs } from "../format.ts";
import { linear, niceTicks } from "./scale.ts";

const W = 1000;
const LABEL = 200;
const ROW = 24;
const AXIS = 26;

export function Gantt(props: { spans: TaskSpan[]; stages: string[]; testid?: string }) {
  const spans = props.spans.filter((s) => Number.isFinite(tsMs(s.start)) && Number.isFinite(tsMs(s.end)));
  if (spans.length === 0) return <div class="chart-empty" data-testid={props.testid}>No spans.</div>;
  const t0 = Math.min(...spans.map((s) => tsMs(s.start)));
  const t1 = Math.max(...spans.map((s) => tsMs(s.end)));
  const rows: string[] = [];
  for (const s of spans) {
    const key = rowKey(s);
    if (!rows.includes(key)) rows.push(key);
  }
  const H = rows.length * ROW + AXIS + 4;
  const x = linear(0, Math.max(t1 - t0, 1), LABEL, W - 12);
  return (
    <div class="chart gantt" data-testid={props.testid}>
      <svg viewBox={`0 0 ${W} ${H}`} role="img">
        {niceTicks(0, t1 - t0, 6).map((t) => (
          <g key={t} class="tick">
            <line x1={x(t)} x2={x(t)} y1={0} y2={rows.length * ROW} />
            <text x={x(t)} y={rows.length * ROW + 16} text-anchor="middle">
              {fmtMs(t)}
            </text>
          </g>
        ))}
        {rows.map((r, i) => (
          <text key={r} class="row-label" x={LABEL - 8} y={i * ROW + ROW / 2 + 4} text-anchor="end">
            {r}
          </text>
        ))}
        {spans.map((s, i) => {
          const start = tsMs(s.start) - t0;
          const end = tsMs(s.end) - t0;
          const left = x(start);
          const width = Math.max(x(end) - left, 1.5);
          const row = rows.indexOf(rowKey(s));
          const where = s.toNode ? `${s.node} → ${s.toNode}` : s.node;
          return (
            <g key={i} class="bar" data-testid="gantt-bar">
              <rect
                x={left}
                y={row * ROW + 3}
                width={width}
                height={ROW - 6}
                rx={3}
                fill={s.stage ? colourFor(s.stage, props.stages) : "#94a3b8"}
              />
              {width > s.name.length * 6 + 8 && (
                <text x={left + 4} y={row * ROW + ROW / 2 + 4}>
                  {s.name}
                </text>
              )}
              <title>
                {`${s.name}${s.stage ? ` (stage ${s.stage})` : ""} on ${where}: ${fmtMs(end - start)}, from ${fmtMs(start)}`}
              </title>
            </g>
          );
        })}
      </svg>
    </div>
  );
}

function rowKey(s: TaskSpan): string {
  return `${s.node || "?"} · ${s.component || s.name.split(".")[0]}`;
}
