// Number and time formatting shared by the pages.
import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Codec, DataType, type Configuration, type Resolution } from "../../gen/ts/dayu/v1/types_pb.ts";

/** Seconds as "12.3 ms", "456 ms" or "1.23 s". */
export function fmtSeconds(s: number): string {
  if (!Number.isFinite(s)) return "–";
  const ms = s * 1000;
  if (Math.abs(ms) < 10) return `${ms.toFixed(2)} ms`;
  if (Math.abs(ms) < 1000) return `${ms.toFixed(ms < 100 ? 1 : 0)} ms`;
  return `${s.toFixed(2)} s`;
}

/** Milliseconds as a duration, the same way. */
export function fmtMs(ms: number): string {
  return fmtSeconds(ms / 1000);
}

export function fmtPercent(p: number, digits = 0): string {
  return Number.isFinite(p) ? `${p.toFixed(digits)} %` : "–";
}

/** Bytes in the nearest binary unit: "512 B", "3.4 KiB", "123 MiB", "7.81 GiB". */
export function fmtBytes(bytes: number | bigint): string {
  const b = Number(bytes);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = b;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[i]}`;
}

export function fmtMbps(mbps: number): string {
  return mbps >= 100 ? `${mbps.toFixed(0)} Mbit/s` : `${mbps.toFixed(1)} Mbit/s`;
}

export function fmtCount(n: number | bigint): string {
  return Number(n).toLocaleString("en-US");
}

/** Milliseconds since the epoch of a timestamp, NaN when unset. */
export function tsMs(ts: Timestamp | undefined): number {
  return ts ? timestampMs(ts) : NaN;
}

/** Local wall-clock time of a timestamp, "14:03:27", or "–" when unset. */
export function fmtTime(ts: Timestamp | undefined): string {
  const ms = tsMs(ts);
  if (!Number.isFinite(ms)) return "–";
  return new Date(ms).toLocaleTimeString("en-GB", { hour12: false });
}

/** Local date and time, "2026-12-06 14:03:27". */
export function fmtDateTime(ts: Timestamp | undefined): string {
  const ms = tsMs(ts);
  if (!Number.isFinite(ms)) return "–";
  const d = new Date(ms);
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${d.toLocaleTimeString("en-GB", { hour12: false })}`;
}

export function fmtResolution(r: Resolution | undefined): string {
  return r ? `${r.width}×${r.height}` : "–";
}

export function codecName(c: Codec): string {
  return c === Codec.UNSPECIFIED ? "–" : (Codec[c] ?? String(c)).replace("_", " ");
}

export function dataTypeName(t: DataType): string {
  return t === DataType.UNSPECIFIED ? "?" : (DataType[t] ?? String(t)).toLowerCase();
}

/** A configuration on one line: "1280×720 · 10 fps · q85 · 4 frames/task · JPEG". */
export function fmtConfiguration(c: Configuration | undefined): string {
  if (!c) return "–";
  const fps = Number.isInteger(c.fps) ? c.fps.toFixed(0) : c.fps.toFixed(1);
  return `${fmtResolution(c.resolution)} · ${fps} fps · q${c.quality} · ${c.framesPerSegment} frames/task · ${codecName(c.codec)}`;
}

/** The p-quantile (0..1) of already sorted values, by nearest rank. */
export function quantile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[i]!;
}

/** A stable colour per name (stage, link), from a small palette. */
const PALETTE = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"];
export function colourFor(name: string, names?: string[]): string {
  const i = names ? names.indexOf(name) : -1;
  if (i >= 0) return PALETTE[i % PALETTE.length]!;
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length]!;
}
