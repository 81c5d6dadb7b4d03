// The last frame of a stream (a JPEG) with what each stage found drawn over it: a rectangle per
// box in the stage's colour, its label (or recognised text) and score.
import { useMemo } from "preact/hooks";
import type { GetLatestFrameResponse } from "../../../gen/ts/dayu/v1/backend_pb.ts";
import { colourFor } from "../format.ts";

export function FrameView(props: { frame: GetLatestFrameResponse; stages: string[]; testid?: string }) {
  const { frame } = props;
  const src = useMemo(() => `data:image/jpeg;base64,${base64(frame.jpeg)}`, [frame.jpeg]);
  const w = frame.resolution?.width || 1;
  const h = frame.resolution?.height || 1;
  const font = Math.max(10, Math.round(h / 40));
  return (
    <div class="frame" data-testid={props.testid}>
      <div class="frame-box">
        <img src={src} alt={`frame ${frame.frameIndex}`} data-testid="frame-image" />
        <svg viewBox={`0 0 ${w} ${h}`} preserveAspectRatio="none">
          {frame.stages.flatMap((stage) =>
            stage.detections.map((d, i) => {
              const b = d.box;
              if (!b) return null;
              const colour = colourFor(stage.stage, props.stages);
              const label = `${d.text || d.label}${d.score ? ` ${Math.round(d.score * 100)}%` : ""}`;
              return (
                <g key={`${stage.stage}-${i}`} data-testid="frame-detection" data-stage={stage.stage} data-label={d.label}>
                  <rect
                    x={b.x1}
                    y={b.y1}
                    width={Math.max(b.x2 - b.x1, 1)}
                    height={Math.max(b.y2 - b.y1, 1)}
                    fill="none"
                    stroke={colour}
                    stroke-width={Math.max(2, font / 6)}
                    vector-effect="non-scaling-stroke"
                  />
                  <text x={b.x1 + 2} y={Math.max(b.y1 - 4, font)} fill={colour} font-size={font} class="frame-label">
                    {label}
                  </text>
                </g>
              );
            }),
          )}
        </svg>
      </div>
      <div class="legend">
        {frame.stages.map((s) => (
          <span key={s.stage}>
            <i style={{ background: colourFor(s.stage, props.stages) }} />
            {s.stage}: {s.detections.length}
          </span>
        ))}
        <span class="muted">frame {frame.frameIndex.toString()}</span>
      </div>
    </div>
  );
}

function base64(bytes: Uint8Array): string {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}
