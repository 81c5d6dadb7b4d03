// A pipeline's DAG: stages in columns by depth (roots, which take the segment's frames, on the
// left), an arrow from each parent to its child. Parents that name no stage, and cycles, are
// tolerated (the editor shows them while the user edits; validation reports them).
import { colourFor } from "../format.ts";

export interface DagStage {
  name: string;
  processor: string;
  parents: string[];
}

const COL = 190;
const BOX_W = 150;
const BOX_H = 44;
const ROW = 64;

/** Depth of every stage: 0 for roots, else one more than its deepest parent (cycles cut off). */
export function depths(stages: DagStage[]): Map<string, number> {
  const names = new Set(stages.map((s) => s.name));
  const depth = new Map(stages.map((s) => [s.name, 0]));
  for (let round = 0; round < stages.length; round++) {
    let changed = false;
    for (const s of stages) {
      const d = Math.max(0, ...s.parents.filter((p) => names.has(p) && p !== s.name).map((p) => depth.get(p)! + 1));
      if (d !== depth.get(s.name) && d < stages.length) {
        depth.set(s.name, d);
        changed = true;
      }
    }
    if (!changed) break;
  }
  return depth;
}

export function DagView(props: { stages: DagStage[]; testid?: string }) {
  const { stages } = props;
  if (stages.length === 0) {
    return <div class="chart-empty" data-testid={props.testid}>Add a stage to draw the DAG.</div>;
  }
  const depth = depths(stages);
  const layers: string[][] = [];
  for (const s of stages) {
    const d = depth.get(s.name) ?? 0;
    (layers[d] ??= []).push(s.name);
  }
  const pos = new Map<string, { x: number; y: number }>();
  const rows = Math.max(...layers.map((l) => l?.length ?? 0));
  const H = rows * ROW + 16;
  layers.forEach((layer, d) => {
    const top = (H - layer.length * ROW) / 2;
    layer.forEach((name, i) => pos.set(name, { x: 12 + d * COL, y: top + i * ROW + (ROW - BOX_H) / 2 }));
  });
  const W = layers.length * COL - (COL - BOX_W) + 24;
  const names = stages.map((s) => s.name);
  return (
    <div class="dag" data-testid={props.testid}>
      <svg viewBox={`0 0 ${W} ${H}`} style={{ maxWidth: `${W}px` }} role="img">
        <defs>
          <marker id="dag-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto">
            <path d="M0,0L10,5L0,10z" fill="#64748b" />
          </marker>
        </defs>
        {stages.flatMap((s, i) =>
          s.parents
            .filter((p) => pos.has(p))
            .map((p) => {
              const a = pos.get(p)!;
              const b = pos.get(s.name)!;
              const x1 = a.x + BOX_W;
              const y1 = a.y + BOX_H / 2;
              const x2 = b.x;
              const y2 = b.y + BOX_H / 2;
              const back = x2 <= x1;
              const d = back
                ? `M${x1},${y1}C${x1 + 60},${y1 - 70} ${x2 - 60},${y2 - 70} ${x2},${y2}`
                : `M${x1},${y1}C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`;
              return <path key={`${i}:${p}`} class={back ? "edge cycle" : "edge"} d={d} marker-end="url(#dag-arrow)" />;
            }),
        )}
        {stages.map((s, i) => {
          const p = pos.get(s.name)!;
          return (
            <g key={i} class="dag-node" data-testid="dag-node" data-name={s.name}>
              <rect x={p.x} y={p.y} width={BOX_W} height={BOX_H} rx={6} style={{ stroke: colourFor(s.name, names) }} />
              <text x={p.x + BOX_W / 2} y={p.y + 19} text-anchor="middle" class="dag-name">
                {clip(s.name, 20)}
              </text>
              <text x={p.x + BOX_W / 2} y={p.y + 35} text-anchor="middle" class="dag-proc">
                {clip(s.processor, 24)}
              </text>
            </g>
          );
        })}
      </svg>
    </div>
  );
}

function clip(text: string, n: number): string {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}
