// A small line chart in SVG: series of (x, y) points, optional horizontal and vertical reference
// lines (a budget), optional point markers (dropped tasks). Scales to its container's width.
import { linear, niceDomain, niceTicks } from "./scale.ts";

export interface Point {
  x: number;
  y: number;
}

export interface Series {
  name: string;
  colour: string;
  points: Point[];
  /** Draw as a step function (a CDF) rather than straight segments. */
  step?: boolean;
}

export interface RefLine {
  value: number;
  label: string;
  colour?: string;
}

export interface Marker extends Point {
  colour: string;
  title: string;
}

export interface LineChartProps {
  series: Series[];
  fmtX: (x: number) => string;
  fmtY: (y: number) => string;
  hLine?: RefLine;
  vLine?: RefLine;
  markers?: Marker[];
  /** Fixed y range; default: from 0 to the data's maximum (and the reference line's). */
  yDomain?: [number, number];
  xDomain?: [number, number];
  height?: number;
  testid?: string;
  empty?: string;
}

const W = 640;
const PAD = { left: 64, right: 16, top: 12, bottom: 28 };

export function LineChart(props: LineChartProps) {
  const H = props.height ?? 200;
  const points = props.series.flatMap((s) => s.points);
  if (points.length === 0 && !props.markers?.length) {
    return (
      <div class="chart-empty" data-testid={props.testid}>
        {props.empty ?? "No data yet."}
      </div>
    );
  }
  const all = [...points, ...(props.markers ?? [])];
  const xs = all.map((p) => p.x);
  const xDomain = props.xDomain ?? [Math.min(...xs), Math.max(...xs)];
  if (xDomain[0] === xDomain[1]) xDomain[1] = xDomain[0] + 1;
  const ys = all.map((p) => p.y);
  if (props.hLine) ys.push(props.hLine.value);
  const yDomain = props.yDomain ?? niceDomain(ys);
  const x = linear(xDomain[0], xDomain[1], PAD.left, W - PAD.right);
  const y = linear(yDomain[0], yDomain[1], H - PAD.bottom, PAD.top);

  const path = (s: Series) =>
    s.points
      .map((p, i) => {
        const px = x(p.x).toFixed(1);
        const py = y(p.y).toFixed(1);
        if (i === 0) return `M${px},${py}`;
        return s.step ? `H${px}V${py}` : `L${px},${py}`;
      })
      .join("");

  return (
    <div class="chart" data-testid={props.testid}>
      <svg viewBox={`0 0 ${W} ${H}`} role="img">
        {niceTicks(yDomain[0], yDomain[1], 4).map((t) => (
          <g key={`y${t}`} class="tick">
            <line x1={PAD.left} x2={W - PAD.right} y1={y(t)} y2={y(t)} />
            <text x={PAD.left - 6} y={y(t) + 4} text-anchor="end">
              {props.fmtY(t)}
            </text>
          </g>
        ))}
        {niceTicks(xDomain[0], xDomain[1], 6).map((t) => (
          <text key={`x${t}`} class="tick" x={x(t)} y={H - 8} text-anchor="middle">
            {props.fmtX(t)}
          </text>
        ))}
        <line class="axis" x1={PAD.left} x2={W - PAD.right} y1={H - PAD.bottom} y2={H - PAD.bottom} />
        {props.hLine && props.hLine.value >= yDomain[0] && props.hLine.value <= yDomain[1] && (
          <g class="refline" style={{ stroke: props.hLine.colour, fill: props.hLine.colour }}>
            <line x1={PAD.left} x2={W - PAD.right} y1={y(props.hLine.value)} y2={y(props.hLine.value)} />
            <text x={W - PAD.right - 4} y={y(props.hLine.value) - 4} text-anchor="end">
              {props.hLine.label}
            </text>
          </g>
        )}
        {props.vLine && props.vLine.value >= xDomain[0] && props.vLine.value <= xDomain[1] && (
          <g class="refline" style={{ stroke: props.vLine.colour, fill: props.vLine.colour }}>
            <line x1={x(props.vLine.value)} x2={x(props.vLine.value)} y1={PAD.top} y2={H - PAD.bottom} />
            <text x={x(props.vLine.value) - 4} y={PAD.top + 10} text-anchor="end">
              {props.vLine.label}
            </text>
          </g>
        )}
        {props.series.map((s) => (
          <path key={s.name} class="line" d={path(s)} style={{ stroke: s.colour }}>
            <title>{s.name}</title>
          </path>
        ))}
        {props.markers?.map((m, i) => (
          <g key={i} class="marker" style={{ stroke: m.colour }}>
            <path d={`M${x(m.x) - 4},${y(m.y) - 4}l8,8m0,-8l-8,8`} />
            <title>{m.title}</title>
          </g>
        ))}
      </svg>
      {props.series.length > 1 && (
        <div class="legend">
          {props.series.map((s) => (
            <span key={s.name}>
              <i style={{ background: s.colour }} />
              {s.name}
            </span>
          ))}
        </div>
      )}
    </div>
  );
}
