// Streams: the installed ones (ListInstalledStreams) joined with what the generators run
// (GetSystemStatus().streams: frames, tasks, the streams of the mesh file), an install form
// (InstallStream), and per row Uninstall (UninstallStream) and Change policy (SetStreamPolicy).
import { create } from "@bufbuild/protobuf";
import { useEffect, useState } from "preact/hooks";
import type { GetSystemStatusResponse } from "../../../gen/ts/dayu/v1/backend_pb.ts";
import { StreamSpecSchema, type StreamSpec } from "../../../gen/ts/dayu/v1/decision_pb.ts";
import { StreamOrigin, type StreamStatus } from "../../../gen/ts/dayu/v1/generator_pb.ts";
import { Codec, type Pipeline } from "../../../gen/ts/dayu/v1/types_pb.ts";
import type { PageProps } from "../app.tsx";
import { backend, listInstalledStreams, listPipelines } from "../api.ts";
import { ConfirmButton, ErrorBox, Loading } from "../components/common.tsx";
import { parseParams, PolicyInputs, type PolicyDraft } from "../components/PolicyInputs.tsx";
import { fmtCount, fmtSeconds } from "../format.ts";

const REFRESH_MS = 5000;

interface Row {
  id: string;
  spec: StreamSpec;
  installed: boolean;
  live?: StreamStatus;
}

export function Streams({ mesh }: PageProps) {
  const [installed, setInstalled] = useState<StreamSpec[]>();
  const [status, setStatus] = useState<GetSystemStatusResponse>();
  const [pipelines, setPipelines] = useState<Pipeline[]>([]);
  const [loadError, setLoadError] = useState<unknown>();
  const [statusError, setStatusError] = useState<unknown>();
  const [message, setMessage] = useState("");

  async function reload() {
    try {
      const [streams, pipes] = await Promise.all([listInstalledStreams(), listPipelines()]);
      setInstalled(streams);
      setPipelines(pipes);
      setLoadError(undefined);
    } catch (err) {
      setLoadError(err);
    }
    try {
      setStatus(await backend.getSystemStatus({}));
      setStatusError(undefined);
    } catch (err) {
      setStatusError(err);
    }
  }

  useEffect(() => {
    void reload();
    const timer = setInterval(() => void reload(), REFRESH_MS);
    return () => clearInterval(timer);
  }, []);

  const rows = joinRows(installed ?? [], status?.streams ?? []);
  return (
    <>
      <section>
        <div class="section-head">
          <h2>Streams</h2>
          <button class="link" data-testid="streams-refresh" onClick={() => void reload()}>
            Refresh
          </button>
        </div>
        <ErrorBox error={loadError} testid="streams-error" />
        <ErrorBox error={statusError} testid="streams-status-error" />
        {message && (
          <div class="ok" data-testid="streams-message">
            {message}
          </div>
        )}
        {installed === undefined ? (
          !loadError && <Loading what="streams" />
        ) : rows.length === 0 ? (
          <p class="muted" data-testid="streams-empty">
            No streams: install one below.
          </p>
        ) : (
          <table class="streams" data-testid="streams-table">
            <thead>
              <tr>
                <th>Stream</th>
                <th>Source</th>
                <th>Node</th>
                <th>Pipeline</th>
                <th class="num">Budget</th>
                <th>Policy</th>
                <th class="num">Frames kept / captured</th>
                <th class="num">Tasks</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {rows.map((row) => (
                <StreamRow
                  key={row.id}
                  row={row}
                  policies={mesh.policies}
                  onChanged={(text) => {
                    setMessage(text);
                    void reload();
                  }}
                />
              ))}
            </tbody>
          </table>
        )}
      </section>
      <InstallForm mesh={mesh} pipelines={pipelines} onInstalled={() => void reload()} />
    </>
  );
}

/** Installed streams first (in id order), then the streams only the generators know. */
function joinRows(installed: StreamSpec[], live: StreamStatus[]): Row[] {
  const byId = new Map(live.filter((s) => s.spec).map((s) => [s.spec!.streamId, s]));
  const rows: Row[] = installed.map((spec) => ({ id: spec.streamId, spec, installed: true, live: byId.get(spec.streamId) }));
  const ids = new Set(rows.map((r) => r.id));
  for (const s of live) {
    if (s.spec && !ids.has(s.spec.streamId)) rows.push({ id: s.spec.streamId, spec: s.spec, installed: false, live: s });
  }
  return rows;
}

function StreamRow(props: { row: Row; policies: string[]; onChanged: (message: string) => void }) {
  const { row } = props;
  const { spec, live } = row;
  const [changing, setChanging] = useState(false);
  const [policy, setPolicy] = useState<PolicyDraft>({
    name: spec.policy?.name ?? props.policies[0] ?? "",
    params: spec.policy?.params && Object.keys(spec.policy.params).length ? JSON.stringify(spec.policy.params) : "",
  });
  const [error, setError] = useState<unknown>();

  async function uninstall() {
    setError(undefined);
    try {
      const reply = await backend.uninstallStream({ streamId: row.id });
      props.onChanged(
        reply.stopped
          ? `Uninstalled ${row.id}.`
          : `Uninstalled ${row.id}; its generator did not answer and stops it when it does.`,
      );
    } catch (err) {
      setError(err);
    }
  }

  async function applyPolicy() {
    const parsed = parseParams(policy.params);
    if ("error" in parsed) return;
    setError(undefined);
    try {
      const reply = await backend.setStreamPolicy({ streamId: row.id, policy: { name: policy.name, params: parsed.params } });
      const d = reply.decision;
      setChanging(false);
      props.onChanged(
        `Policy of ${row.id} set to ${policy.name}${d ? `: decision v${d.version}${d.reason ? `, ${d.reason}` : ""}` : ""}.`,
      );
    } catch (err) {
      setError(err);
    }
  }

  const origin = row.installed
    ? live
      ? "installed"
      : "installed, not running"
    : live?.origin === StreamOrigin.SETTINGS
      ? "from the mesh file"
      : "running";
  const params = spec.policy?.params && Object.keys(spec.policy.params).length ? JSON.stringify(spec.policy.params) : "";
  return (
    <>
      <tr data-testid="stream-row" data-id={row.id}>
        <td>
          <a href={`#/results/${encodeURIComponent(row.id)}`} data-testid="stream-results">
            {row.id}
          </a>
          <div class={`badge ${row.installed ? (live ? "" : "warn") : "muted"}`} data-testid="stream-origin">
            {origin}
          </div>
        </td>
        <td>{spec.sourceId}</td>
        <td>{spec.node}</td>
        <td>{spec.pipeline?.name ?? "–"}</td>
        <td class="num">{fmtSeconds(spec.latencyBudgetS)}</td>
        <td class="policy">
          {spec.policy?.name ?? "–"}
          {params && <div class="muted small mono">{params}</div>}
          {live?.decision?.paused && <div class="badge warn">paused</div>}
        </td>
        <td class="num">{live ? `${fmtCount(live.framesKept)} / ${fmtCount(live.framesCaptured)}` : "–"}</td>
        <td class="num">{live ? fmtCount(live.tasksGenerated) : "–"}</td>
        <td class="actions">
          <button data-testid="stream-policy-change" onClick={() => setChanging(!changing)}>
            Change policy
          </button>
          {row.installed && <ConfirmButton label="Uninstall" testid="stream-uninstall" onConfirm={() => void uninstall()} />}
        </td>
      </tr>
      {(changing || error !== undefined) && (
        <tr class="subrow" data-testid="stream-subrow" data-id={row.id}>
          <td colSpan={9}>
            {changing && (
              <div class="form-grid">
                <PolicyInputs testid="row" policies={props.policies} value={policy} onChange={setPolicy} />
                <div class="form-actions">
                  <button class="primary" data-testid="row-policy-apply" onClick={() => void applyPolicy()}>
                    Apply
                  </button>
                  <button class="link" data-testid="row-policy-cancel" onClick={() => setChanging(false)}>
                    Cancel
                  </button>
                </div>
              </div>
            )}
            <ErrorBox error={error} testid="stream-row-error" />
          </td>
        </tr>
      )}
    </>
  );
}

function InstallForm(props: { mesh: PageProps["mesh"]; pipelines: Pipeline[]; onInstalled: () => void }) {
  const { mesh } = props;
  const generatorNodes = mesh.nodes.filter((n) => n.generator);
  const [streamId, setStreamId] = useState("");
  const [pipeline, setPipeline] = useState("");
  const [source, setSource] = useState(mesh.sources[0]?.sourceId ?? "");
  const [node, setNode] = useState(generatorNodes[0]?.name ?? "");
  const [policy, setPolicy] = useState<PolicyDraft>({ name: mesh.policies[0] ?? "", params: "" });
  const [budget, setBudget] = useState("1");
  const first = mesh.sources[0];
  const [width, setWidth] = useState(String(first?.resolution?.width ?? ""));
  const [height, setHeight] = useState(String(first?.resolution?.height ?? ""));
  const [fps, setFps] = useState(String(first?.fps ?? ""));
  const [quality, setQuality] = useState("85");
  const [framesPerSegment, setFramesPerSegment] = useState("4");
  const [codec, setCodec] = useState(Codec.JPEG);
  const [error, setError] = useState<unknown>();
  const [ok, setOk] = useState("");
  const [busy, setBusy] = useState(false);

  // The first pipeline once they are loaded, unless one was chosen meanwhile (effects run after paint).
  useEffect(() => {
    const first = props.pipelines[0]?.name;
    if (first) setPipeline((chosen) => chosen || first);
  }, [props.pipelines]);

  function chooseSource(id: string) {
    setSource(id);
    const s = mesh.sources.find((x) => x.sourceId === id);
    if (s) {
      setWidth(String(s.resolution?.width ?? ""));
      setHeight(String(s.resolution?.height ?? ""));
      setFps(String(s.fps));
    }
  }

  async function install(e: Event) {
    e.preventDefault();
    const parsed = parseParams(policy.params);
    if ("error" in parsed) return;
    setError(undefined);
    setOk("");
    setBusy(true);
    const stream = create(StreamSpecSchema, {
      streamId: streamId.trim(),
      sourceId: source,
      node,
      pipeline: props.pipelines.find((p) => p.name === pipeline),
      latencyBudgetS: Number(budget),
      maxConfiguration: {
        resolution: { width: toUint(width), height: toUint(height) },
        fps: Number(fps),
        quality: toUint(quality),
        framesPerSegment: toUint(framesPerSegment),
        codec,
      },
      policy: { name: policy.name, params: parsed.params },
    });
    try {
      const reply = await backend.installStream({ stream });
      setOk(reply.alreadyInstalled ? `${stream.streamId} was already installed.` : `Installed ${stream.streamId}.`);
      props.onInstalled();
    } catch (err) {
      setError(err);
    }
    setBusy(false);
  }

  return (
    <section>
      <h2>Install a stream</h2>
      <form class="form-grid" data-testid="install-form" onSubmit={(e) => void install(e)}>
        <label>
          Stream id
          <input data-testid="install-stream-id" placeholder="cam-3" value={streamId} onInput={(e) => setStreamId(e.currentTarget.value)} />
        </label>
        <label>
          Pipeline
          <select data-testid="install-pipeline" value={pipeline} onChange={(e) => setPipeline(e.currentTarget.value)}>
            {props.pipelines.length === 0 && <option value="">(no pipelines)</option>}
            {props.pipelines.map((p) => (
              <option key={p.name} value={p.name}>
                {p.name}
              </option>
            ))}
          </select>
        </label>
        <label>
          Source
          <select data-testid="install-source" value={source} onChange={(e) => chooseSource(e.currentTarget.value)}>
            {mesh.sources.map((s) => (
              <option key={s.sourceId} value={s.sourceId}>
                {s.sourceId}
              </option>
            ))}
          </select>
        </label>
        <label>
          Node
          <select data-testid="install-node" value={node} onChange={(e) => setNode(e.currentTarget.value)}>
            {generatorNodes.map((n) => (
              <option key={n.name} value={n.name}>
                {n.name}
                {n.cloud ? " (cloud)" : ""}
              </option>
            ))}
          </select>
        </label>
        <label>
          Latency budget (s)
          <input data-testid="install-budget" type="number" step="any" value={budget} onInput={(e) => setBudget(e.currentTarget.value)} />
        </label>
        <PolicyInputs testid="install" policies={mesh.policies} value={policy} onChange={setPolicy} />
        <fieldset class="wide">
          <legend>Best configuration (from the source; policies never exceed it)</legend>
          <label>
            Width
            <input data-testid="install-width" type="number" value={width} onInput={(e) => setWidth(e.currentTarget.value)} />
          </label>
          <label>
            Height
            <input data-testid="install-height" type="number" value={height} onInput={(e) => setHeight(e.currentTarget.value)} />
          </label>
          <label>
            Frame rate
            <input data-testid="install-fps" type="number" step="any" value={fps} onInput={(e) => setFps(e.currentTarget.value)} />
          </label>
          <label>
            Quality
            <input data-testid="install-quality" type="number" value={quality} onInput={(e) => setQuality(e.currentTarget.value)} />
          </label>
          <label>
            Frames per task
            <input
              data-testid="install-frames-per-segment"
              type="number"
              value={framesPerSegment}
              onInput={(e) => setFramesPerSegment(e.currentTarget.value)}
            />
          </label>
          <label>
            Codec
            <select data-testid="install-codec" value={codec} onChange={(e) => setCodec(Number(e.currentTarget.value) as Codec)}>
              <option value={Codec.JPEG}>JPEG</option>
              <option value={Codec.H264}>H.264</option>
              <option value={Codec.RAW_BGR}>raw BGR</option>
            </select>
          </label>
        </fieldset>
        <div class="form-actions wide">
          <button type="submit" class="primary" data-testid="install-submit" disabled={busy}>
            {busy ? "Installing…" : "Install"}
          </button>
          {ok && (
            <span class="ok" data-testid="install-ok">
              {ok}
            </span>
          )}
        </div>
        <div class="wide">
          <ErrorBox error={error} testid="install-error" />
        </div>
      </form>
    </section>
  );
}

/** A non-negative integer field; what is not one is sent as 0, which the backend refuses by name. */
function toUint(text: string): number {
  const n = Number(text);
  return Number.isInteger(n) && n >= 0 && n <= 0xffffffff ? n : 0;
}
