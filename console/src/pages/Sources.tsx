// Sources: the cameras the datasource plays (DescribeMesh().sources), joined with the sources added
// through the backend (ListStoredSources: their parameters, and any the datasource does not play);
// an "Add a source" form (PutSource: a new id adds, an added source's id replaces it) and, per added
// source, Edit (fills the form) and Delete (DeleteSource). After a change the mesh is read again, so
// that the other pages (Streams' install form) see the sources as they are.
import { create } from "@bufbuild/protobuf";
import { useEffect, useState } from "preact/hooks";
import type { MeshSource } from "../../../gen/ts/dayu/v1/backend_pb.ts";
import { SourceSpecSchema, type SourceSpec } from "../../../gen/ts/dayu/v1/datasource_pb.ts";
import { Codec } from "../../../gen/ts/dayu/v1/types_pb.ts";
import type { PageProps } from "../app.tsx";
import { backend, listAll } from "../api.ts";
import { ConfirmButton, ErrorBox, Loading } from "../components/common.tsx";
import { parseParams } from "../components/PolicyInputs.tsx";
import { fmtResolution } from "../format.ts";

/** The kinds of the datasource's source registry, an example of each one's parameters and a hint. */
const KINDS: { kind: string; example: string; hint: string }[] = [
  {
    kind: "synthetic",
    example: '{"width": 960, "height": 540, "fps": 10, "seed": 3}',
    hint: "A synthetic traffic scene with true plate boxes; all optional: width, height, fps, seed, lanes, traffic, phases, duration_s, cycle.",
  },
  {
    kind: "file",
    example: '{"path": "/srv/media/street.mp4", "cycle": true}',
    hint: "A video file the datasource reads: path (under the datasource's media folders); optional: cycle, fps.",
  },
  {
    kind: "photos",
    example: '{"images": ["/srv/media/crossing.jpg", "/srv/media/square.png"], "fps": 10, "seconds_each": 10}',
    hint: "Photos filmed as a camera would: images (files under the datasource's media folders, or DISTRIBUTION:PATH of a file a package ships there); optional: width, height, fps, seconds_each, zoom.",
  },
  {
    kind: "camera",
    example: '{"url": "rtsp://camera.local:554/stream", "fps": 10}',
    hint: "A real camera: url (rtsp, rtsps, http, https) or device (a USB index); optional: fps, default_fps, reconnect_s, timeout_s.",
  },
];

interface SourceDraft {
  id: string;
  kind: string;
  params: string;
  codec: Codec;
  quality: string;
}

const EMPTY_DRAFT: SourceDraft = { id: "", kind: "synthetic", params: "", codec: Codec.JPEG, quality: "" };

interface Row {
  id: string;
  /** As DescribeMesh lists it: absent for a stored source the datasource does not play. */
  played?: MeshSource;
  /** As stored by the backend: only for sources added through it. */
  stored?: SourceSpec;
}

async function listStoredSources(): Promise<SourceSpec[]> {
  return listAll(async (pageToken) => {
    const r = await backend.listStoredSources({ pageSize: 1000, pageToken });
    return { items: r.sources, nextPageToken: r.nextPageToken };
  });
}

export function Sources({ mesh, refreshMesh }: PageProps) {
  const [stored, setStored] = useState<SourceSpec[]>();
  const [loadError, setLoadError] = useState<unknown>();
  const [message, setMessage] = useState("");
  const [draft, setDraft] = useState<SourceDraft>(EMPTY_DRAFT);

  /** The mesh (every page sees it) and the stored sources, again. */
  async function reload() {
    const [meshReply, storedReply] = await Promise.allSettled([refreshMesh(), listStoredSources()]);
    if (storedReply.status === "fulfilled") setStored(storedReply.value);
    const failed = [meshReply, storedReply].find((r) => r.status === "rejected");
    setLoadError(failed?.status === "rejected" ? failed.reason : undefined);
  }

  useEffect(() => {
    void reload();
  }, []);

  function edit(spec: SourceSpec) {
    setDraft({
      id: spec.sourceId,
      kind: spec.kind,
      params: spec.params && Object.keys(spec.params).length ? JSON.stringify(spec.params, null, 2) : "",
      codec: spec.codec === Codec.RAW_BGR ? Codec.RAW_BGR : Codec.JPEG,
      quality: spec.quality ? String(spec.quality) : "",
    });
    document.getElementById("source-add")?.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  const rows = joinRows(mesh.sources, stored ?? []);
  return (
    <>
      <section>
        <div class="section-head">
          <h2>Sources</h2>
          <button class="link" data-testid="sources-refresh" onClick={() => void reload()}>
            Refresh
          </button>
        </div>
        <ErrorBox error={loadError} testid="sources-error" />
        {message && (
          <div class="ok" data-testid="sources-message">
            {message}
          </div>
        )}
        {rows.length === 0 ? (
          stored === undefined && !loadError ? (
            <Loading what="sources" />
          ) : (
            <p class="muted" data-testid="sources-empty">
              The mesh has no sources: add one below.
            </p>
          )
        ) : (
          <table data-testid="sources-table">
            <thead>
              <tr>
                <th>Source</th>
                <th>Kind</th>
                <th class="num">Resolution</th>
                <th class="num">Frame rate</th>
                <th>Parameters</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {rows.map((row) => (
                <SourceRow
                  key={row.id}
                  row={row}
                  onEdit={edit}
                  onDeleted={() => {
                    setMessage(`Deleted ${row.id}.`);
                    void reload();
                  }}
                />
              ))}
            </tbody>
          </table>
        )}
      </section>
      <AddForm
        draft={draft}
        onChange={setDraft}
        replacing={rows.some((r) => r.id === draft.id.trim() && r.stored !== undefined)}
        onAdded={() => {
          setMessage("");
          void reload();
        }}
      />
    </>
  );
}

/** The played sources in the mesh's order, then the stored ones the datasource does not play. */
function joinRows(played: MeshSource[], stored: SourceSpec[]): Row[] {
  const byId = new Map(stored.map((s) => [s.sourceId, s]));
  const rows: Row[] = played.map((s) => ({ id: s.sourceId, played: s, stored: byId.get(s.sourceId) }));
  const ids = new Set(rows.map((r) => r.id));
  for (const s of stored) {
    if (!ids.has(s.sourceId)) rows.push({ id: s.sourceId, stored: s });
  }
  return rows;
}

function SourceRow(props: { row: Row; onEdit: (spec: SourceSpec) => void; onDeleted: () => void }) {
  const { row } = props;
  const { played, stored } = row;
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);

  async function remove() {
    setError(undefined);
    setBusy(true);
    try {
      await backend.deleteSource({ sourceId: row.id });
      props.onDeleted();
    } catch (err) {
      setError(err);
    }
    setBusy(false);
  }

  const added = played?.added === true || stored !== undefined;
  const params = stored?.params && Object.keys(stored.params).length ? JSON.stringify(stored.params) : "";
  const codec = stored ? (stored.codec === Codec.RAW_BGR ? "raw BGR" : `JPEG ${stored.quality || 90}`) : "";
  return (
    <>
      <tr data-testid="source-row" data-id={row.id}>
        <td>
          {row.id}
          <div
            class={`badge ${added ? (played ? "" : "warn") : "muted"}`}
            data-testid="source-origin"
            data-added={added ? "true" : "false"}
          >
            {added ? (played ? "added" : "added, not playing") : "from the mesh file"}
          </div>
        </td>
        <td data-testid="source-kind">{played?.kind || stored?.kind || "–"}</td>
        <td class="num">{played ? fmtResolution(played.resolution) : "–"}</td>
        <td class="num">{played ? `${played.fps.toFixed(played.fps % 1 ? 1 : 0)} fps` : "–"}</td>
        <td class="source-params">
          {params ? <span class="mono small">{params}</span> : <span class="muted">–</span>}
          {codec && <div class="muted small">{codec}</div>}
        </td>
        <td class="actions">
          {added && (
            <>
              <button data-testid="source-edit" disabled={!stored} onClick={() => stored && props.onEdit(stored)}>
                Edit
              </button>
              <ConfirmButton label="Delete" testid="source-delete" disabled={busy} onConfirm={() => void remove()} />
            </>
          )}
        </td>
      </tr>
      {error !== undefined && (
        <tr class="subrow" data-testid="source-subrow" data-id={row.id}>
          <td colSpan={6}>
            <ErrorBox error={error} testid="source-row-error" />
          </td>
        </tr>
      )}
    </>
  );
}

function AddForm(props: {
  draft: SourceDraft;
  onChange: (draft: SourceDraft) => void;
  /** Whether the id names a source added before (PutSource then replaces it). */
  replacing: boolean;
  onAdded: () => void;
}) {
  const { draft } = props;
  const [error, setError] = useState<unknown>();
  const [ok, setOk] = useState("");
  const [busy, setBusy] = useState(false);
  const kind = KINDS.find((k) => k.kind === draft.kind);
  const parsed = parseParams(draft.params);
  const quality = parseQuality(draft.quality);
  const set = (change: Partial<SourceDraft>) => props.onChange({ ...draft, ...change });

  async function submit(e: Event) {
    e.preventDefault();
    if ("error" in parsed || ("error" in quality && draft.codec !== Codec.RAW_BGR)) return;
    setError(undefined);
    setOk("");
    setBusy(true);
    const source = create(SourceSpecSchema, {
      sourceId: draft.id.trim(),
      kind: draft.kind,
      params: parsed.params,
      codec: draft.codec,
      quality: draft.codec === Codec.RAW_BGR || "error" in quality ? 0 : quality.quality,
    });
    try {
      const reply = await backend.putSource({ source });
      const info = reply.info;
      const plays = info ? `: ${info.kind}, ${fmtResolution(info.resolution)} at ${info.fps.toFixed(info.fps % 1 ? 1 : 0)} fps` : "";
      const text = `${reply.replaced ? "Replaced" : "Added"} ${source.sourceId}${plays}.`;
      setOk(text);
      props.onAdded();
    } catch (err) {
      setError(err);
    }
    setBusy(false);
  }

  return (
    <section id="source-add">
      <h2>Add a source</h2>
      <form class="form-grid" data-testid="source-add-form" onSubmit={(e) => void submit(e)}>
        <label>
          Source id
          <input data-testid="source-add-id" placeholder="street-3" value={draft.id} onInput={(e) => set({ id: e.currentTarget.value })} />
        </label>
        <label>
          Kind
          <select data-testid="source-add-kind" value={draft.kind} onChange={(e) => set({ kind: e.currentTarget.value })}>
            {KINDS.map((k) => (
              <option key={k.kind} value={k.kind}>
                {k.kind}
              </option>
            ))}
            {!kind && <option value={draft.kind}>{draft.kind}</option>}
          </select>
        </label>
        <label>
          Codec
          <select data-testid="source-add-codec" value={draft.codec} onChange={(e) => set({ codec: Number(e.currentTarget.value) as Codec })}>
            <option value={Codec.JPEG}>JPEG</option>
            <option value={Codec.RAW_BGR}>raw BGR</option>
          </select>
        </label>
        <label>
          JPEG quality
          <input
            data-testid="source-add-quality"
            type="number"
            min={1}
            max={100}
            placeholder="90"
            disabled={draft.codec === Codec.RAW_BGR}
            value={draft.quality}
            onInput={(e) => set({ quality: e.currentTarget.value })}
          />
          {"error" in quality && draft.codec !== Codec.RAW_BGR && (
            <span class="error inline" data-testid="source-add-quality-error">
              {quality.error}
            </span>
          )}
        </label>
        <label class="wide">
          Parameters (JSON object)
          <textarea
            rows={3}
            spellcheck={false}
            placeholder={kind?.example ?? "{}"}
            data-testid="source-add-params"
            value={draft.params}
            onInput={(e) => set({ params: e.currentTarget.value })}
          />
          {"error" in parsed && (
            <span class="error inline" data-testid="source-add-params-error">
              {parsed.error}
            </span>
          )}
        </label>
        {kind && (
          <div class="wide hint muted small" data-testid="source-add-hint">
            {kind.hint}{" "}
            <button type="button" class="link" data-testid="source-add-example" onClick={() => set({ params: kind.example })}>
              Use the example
            </button>
          </div>
        )}
        <div class="form-actions wide">
          <button
            type="submit"
            class="primary"
            data-testid="source-add-submit"
            disabled={busy}
          >
            {busy ? "Saving…" : props.replacing ? "Replace source" : "Add source"}
          </button>
          {ok && (
            <span class="ok" data-testid="source-add-ok">
              {ok}
            </span>
          )}
        </div>
        <div class="wide">
          <ErrorBox error={error} testid="source-add-error" />
        </div>
      </form>
    </section>
  );
}

/** The quality field: empty for the datasource's default (0 on the wire, 90), else a whole number. */
function parseQuality(text: string): { quality: number } | { error: string } {
  if (text.trim() === "") return { quality: 0 };
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) return { error: "quality: a whole number from 1 to 100 (empty: 90)" };
  return { quality: n };
}
