// The empirical CDF of some values (latencies), as a step line, with an optional reference (budget).
import { LineChart, type RefLine } from "./LineChart.tsx";

export interface CdfProps {
  values: number[];
  fmtX: (x: number) => string;
  vLine?: RefLine;
  colour?: string;
  testid?: string;
}

export function Cdf(props: CdfProps) {
  const sorted = [...props.values].filter(Number.isFinite).sort((a, b) => a - b);
  const n = sorted.length;
  const points = sorted.map((v, i) => ({ x: v, y: (i + 1) / n }));
  if (n > 0) points.unshift({ x: sorted[0]!, y: 0 });
  const hi = Math.max(sorted[n - 1] ?? 1, props.vLine?.value ?? 0);
  return (
    <LineChart
      testid={props.testid}
      series={[{ name: "CDF", colour: props.colour ?? "#2563eb", points, step: true }]}
      fmtX={props.fmtX}
      fmtY={(y) => `${Math.round(y * 100)} %`}
      xDomain={[Math.min(0, sorted[0] ?? 0), hi * 1.05 || 1]}
      yDomain={[0, 1]}
      vLine={props.vLine}
      empty="No latencies yet."
    />
  );
}
