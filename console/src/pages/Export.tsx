// Export: a stream's (or every stream's) task records as JSON lines or CSV, between optional times.
// ExportResults streams the file in byte chunks; they are joined into a Blob and downloaded.
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { useEffect, useRef, useState } from "preact/hooks";
import { ExportFormat } from "../../../gen/ts/dayu/v1/backend_pb.ts";
import { backend, isAbort, listInstalledStreams } from "../api.ts";
import { ErrorBox } from "../components/common.tsx";
import { fmtBytes } from "../format.ts";

interface Download {
  url: string;
  name: string;
  bytes: number;
}

export function Export() {
  const [streams, setStreams] = useState<string[]>([]);
  const [streamId, setStreamId] = useState("");
  const [format, setFormat] = useState(ExportFormat.JSON_LINES);
  const [since, setSince] = useState("");
  const [until, setUntil] = useState("");
  const [bytes, setBytes] = useState<number>();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>();
  const [download, setDownload] = useState<Download>();
  const abort = useRef<AbortController | undefined>(undefined);
  const link = useRef<HTMLAnchorElement>(null);

  useEffect(() => {
    (async () => {
      try {
        const [installed, status] = await Promise.all([listInstalledStreams(), backend.getSystemStatus({})]);
        const ids = new Set([...installed.map((s) => s.streamId), ...status.streams.flatMap((s) => (s.spec ? [s.spec.streamId] : []))]);
        setStreams([...ids].sort());
      } catch (err) {
        setError(err);
      }
    })();
    return () => abort.current?.abort();
  }, []);

  // The object URL lives as long as its link.
  useEffect(() => () => download && URL.revokeObjectURL(download.url), [download]);

  // Click the link once it is rendered with the new file.
  useEffect(() => {
    if (download) link.current?.click();
  }, [download]);

  async function run(e: Event) {
    e.preventDefault();
    setError(undefined);
    setDownload(undefined);
    setBytes(0);
    setBusy(true);
    abort.current = new AbortController();
    const { signal } = abort.current;
    const chunks: Uint8Array[] = [];
    let total = 0;
    try {
      const request = {
        streamId,
        format,
        since: since ? timestampFromMs(new Date(since).getTime()) : undefined,
        until: until ? timestampFromMs(new Date(until).getTime()) : undefined,
      };
      for await (const { chunk } of backend.exportResults(request, { signal })) {
        chunks.push(chunk);
        total += chunk.length;
        setBytes(total);
      }
      const csv = format === ExportFormat.CSV;
      const blob = new Blob(chunks as BlobPart[], { type: csv ? "text/csv" : "application/x-ndjson" });
      const name = `dayu-results-${streamId || "all"}.${csv ? "csv" : "jsonl"}`;
      setDownload({ url: URL.createObjectURL(blob), name, bytes: total });
    } catch (err) {
      if (!isAbort(err, signal)) setError(err);
    }
    setBusy(false);
  }

  return (
    <section>
      <h2>Export results</h2>
      <form class="form-grid" data-testid="export-form" onSubmit={(e) => void run(e)}>
        <label>
          Stream
          <select data-testid="export-stream" value={streamId} onChange={(e) => setStreamId(e.currentTarget.value)}>
            <option value="">All streams</option>
            {streams.map((id) => (
              <option key={id} value={id}>
                {id}
              </option>
            ))}
          </select>
        </label>
        <label>
          Format
          <select
            data-testid="export-format"
            value={format}
            onChange={(e) => setFormat(Number(e.currentTarget.value) as ExportFormat)}
          >
            <option value={ExportFormat.JSON_LINES}>JSON lines</option>
            <option value={ExportFormat.CSV}>CSV</option>
          </select>
        </label>
        <label>
          Since (optional)
          <input data-testid="export-since" type="datetime-local" step="1" value={since} onInput={(e) => setSince(e.currentTarget.value)} />
        </label>
        <label>
          Until (optional)
          <input data-testid="export-until" type="datetime-local" step="1" value={until} onInput={(e) => setUntil(e.currentTarget.value)} />
        </label>
        <div class="form-actions wide">
          <button type="submit" class="primary" data-testid="export-submit" disabled={busy}>
            {busy ? "Exporting…" : "Export"}
          </button>
          {busy && (
            <button type="button" class="link" data-testid="export-cancel" onClick={() => abort.current?.abort()}>
              Cancel
            </button>
          )}
          {bytes !== undefined && (
            <span data-testid="export-bytes" data-bytes={String(bytes)}>
              {fmtBytes(bytes)} {busy ? "received…" : "received"}
            </span>
          )}
          {download && (
            <a ref={link} href={download.url} download={download.name} data-testid="export-download">
              Download {download.name} ({fmtBytes(download.bytes)})
            </a>
          )}
        </div>
        <div class="wide">
          <ErrorBox error={error} testid="export-error" />
        </div>
      </form>
    </section>
  );
}
