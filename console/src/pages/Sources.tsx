// The sources (cameras) the datasource plays, as DescribeMesh lists them.
import type { PageProps } from "../app.tsx";
import { fmtResolution } from "../format.ts";

export function Sources({ mesh }: PageProps) {
  return (
    <section>
      <h2>Sources</h2>
      {mesh.sources.length === 0 ? (
        <p class="muted" data-testid="sources-empty">
          The mesh has no sources.
        </p>
      ) : (
        <table data-testid="sources-table">
          <thead>
            <tr>
              <th>Source</th>
              <th class="num">Resolution</th>
              <th class="num">Frame rate</th>
            </tr>
          </thead>
          <tbody>
            {mesh.sources.map((s) => (
              <tr key={s.sourceId} data-testid="source-row" data-id={s.sourceId}>
                <td>{s.sourceId}</td>
                <td class="num">{fmtResolution(s.resolution)}</td>
                <td class="num">{s.fps.toFixed(s.fps % 1 ? 1 : 0)} fps</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
