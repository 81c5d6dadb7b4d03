// Pipelines: the stored ones (list, edit, delete) and a DAG editor. Stages take a processor of the
// mesh; each stage's parents are chosen among the other stages. Every edit is validated by the
// backend (ValidatePipeline, debounced) and Save stores the pipeline (PutPipeline).
import { create } from "@bufbuild/protobuf";
import { useEffect, useRef, useState } from "preact/hooks";
import type { FieldViolation } from "../../../gen/ts/dayu/v1/backend_pb.ts";
import { DataType, PipelineSchema, StageSpecSchema, type Pipeline, type StageSpec } from "../../../gen/ts/dayu/v1/types_pb.ts";
import type { PageProps } from "../app.tsx";
import { backend, listPipelines } from "../api.ts";
import { ConfirmButton, ErrorBox, Loading } from "../components/common.tsx";
import { DagView } from "../components/DagView.tsx";
import { colourFor, dataTypeName } from "../format.ts";

interface Draft {
  name: string;
  stages: StageSpec[];
}

const EMPTY: Draft = { name: "", stages: [] };

export function Pipelines({ mesh }: PageProps) {
  const [pipelines, setPipelines] = useState<Pipeline[]>();
  const [listError, setListError] = useState<unknown>();
  const [draft, setDraft] = useState<Draft>(EMPTY);
  const [violations, setViolations] = useState<FieldViolation[]>();
  const [validateError, setValidateError] = useState<unknown>();
  const [validating, setValidating] = useState(false);
  const [saveError, setSaveError] = useState<unknown>();
  const [saved, setSaved] = useState("");
  const [processor, setProcessor] = useState(mesh.processors[0]?.name ?? "");
  const [stageName, setStageName] = useState("");
  const validation = useRef(0);

  async function reload() {
    try {
      setPipelines(await listPipelines());
      setListError(undefined);
    } catch (err) {
      setListError(err);
    }
  }

  useEffect(() => {
    void reload();
  }, []);

  // Validate 300 ms after the last edit; a reply to an older draft is ignored.
  useEffect(() => {
    const seq = ++validation.current;
    if (draft.name === "" && draft.stages.length === 0) {
      setViolations(undefined);
      setValidateError(undefined);
      setValidating(false);
      return undefined;
    }
    setValidating(true);
    const timer = setTimeout(async () => {
      try {
        const reply = await backend.validatePipeline({ pipeline: toPipeline(draft) });
        if (seq !== validation.current) return;
        setViolations(reply.violations);
        setValidateError(undefined);
      } catch (err) {
        if (seq !== validation.current) return;
        setValidateError(err);
      }
      setValidating(false);
    }, 300);
    return () => clearTimeout(timer);
  }, [draft]);

  function edit(next: Draft) {
    setDraft(next);
    setSaved("");
    setSaveError(undefined);
  }

  function addStage() {
    const proc = mesh.processors.find((p) => p.name === processor);
    if (!proc) return;
    const taken = new Set(draft.stages.map((s) => s.name));
    let name = stageName.trim() || proc.name;
    for (let i = 2; taken.has(name); i++) name = `${stageName.trim() || proc.name}-${i}`;
    // A stage that does not take frames is connected to the last stage that gives what it takes.
    const feeder =
      proc.input === DataType.FRAMES ? undefined : [...draft.stages].reverse().find((s) => s.outputType === proc.input);
    const stage = create(StageSpecSchema, {
      name,
      processor: proc.name,
      parents: feeder ? [feeder.name] : [],
      inputType: proc.input,
      outputType: proc.output,
    });
    edit({ ...draft, stages: [...draft.stages, stage] });
    setStageName("");
  }

  function updateStage(index: number, stage: StageSpec) {
    const old = draft.stages[index]!;
    const stages = draft.stages.map((s, i) => {
      if (i === index) return stage;
      if (stage.name === old.name) return s;
      // A rename follows into the children's parents.
      return { ...s, parents: s.parents.map((p) => (p === old.name ? stage.name : p)) };
    });
    edit({ ...draft, stages });
  }

  function removeStage(index: number) {
    const gone = draft.stages[index]!.name;
    const stages = draft.stages
      .filter((_, i) => i !== index)
      .map((s) => ({ ...s, parents: s.parents.filter((p) => p !== gone) }));
    edit({ ...draft, stages });
  }

  function toggleParent(index: number, parent: string, on: boolean) {
    const s = draft.stages[index]!;
    const parents = on ? [...s.parents, parent] : s.parents.filter((p) => p !== parent);
    updateStage(index, { ...s, parents });
  }

  async function save() {
    setSaveError(undefined);
    setSaved("");
    try {
      const reply = await backend.putPipeline({ pipeline: toPipeline(draft) });
      setSaved(reply.replaced ? `Saved: replaced pipeline ${draft.name}.` : `Saved pipeline ${draft.name}.`);
      void reload();
    } catch (err) {
      setSaveError(err);
    }
  }

  async function remove(name: string) {
    try {
      await backend.deletePipeline({ name });
      setListError(undefined);
      void reload();
    } catch (err) {
      setListError(err);
    }
  }

  const badStages = new Set(
    (violations ?? []).flatMap((v) => {
      const m = /stages\[(\d+)\]/.exec(v.field);
      return m ? [Number(m[1])] : [];
    }),
  );

  return (
    <>
      <section>
        <h2>Pipelines</h2>
        <ErrorBox error={listError} testid="pipelines-error" />
        {pipelines === undefined ? (
          !listError && <Loading what="pipelines" />
        ) : pipelines.length === 0 ? (
          <p class="muted" data-testid="pipelines-empty">
            No pipelines yet: make one below.
          </p>
        ) : (
          <table data-testid="pipelines-table">
            <thead>
              <tr>
                <th>Name</th>
                <th>Stages</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {pipelines.map((p) => (
                <tr key={p.name} data-testid="pipeline-row" data-name={p.name}>
                  <td>{p.name}</td>
                  <td class="stages-summary">
                    {p.stages.map((s) => `${s.name}${s.parents.length ? ` ← ${s.parents.join(", ")}` : ""}`).join(" · ")}
                  </td>
                  <td class="actions">
                    <button data-testid="pipeline-edit" onClick={() => edit({ name: p.name, stages: [...p.stages] })}>
                      Edit
                    </button>
                    <ConfirmButton label="Delete" testid="pipeline-delete" onConfirm={() => void remove(p.name)} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>

      <section class="editor" data-testid="pipeline-editor">
        <div class="section-head">
          <h2>{pipelines?.some((p) => p.name === draft.name) ? `Edit ${draft.name}` : "New pipeline"}</h2>
          <button class="link" data-testid="pipeline-new" onClick={() => edit(EMPTY)}>
            Start over
          </button>
        </div>
        <div class="editor-grid">
          <div>
            <label>
              Pipeline name
              <input
                data-testid="pipeline-name"
                placeholder="e.g. traffic"
                value={draft.name}
                onInput={(e) => edit({ ...draft, name: e.currentTarget.value })}
              />
            </label>

            <div class="add-stage">
              <label>
                Processor
                <select data-testid="stage-processor" value={processor} onChange={(e) => setProcessor(e.currentTarget.value)}>
                  {mesh.processors.map((p) => (
                    <option key={p.name} value={p.name}>
                      {p.name} ({p.kind}) · {dataTypeName(p.input)} → {dataTypeName(p.output)}
                    </option>
                  ))}
                </select>
              </label>
              <label>
                Stage name
                <input
                  data-testid="stage-name"
                  placeholder={processor}
                  value={stageName}
                  onInput={(e) => setStageName(e.currentTarget.value)}
                />
              </label>
              <button data-testid="stage-add" disabled={!processor} onClick={addStage}>
                Add stage
              </button>
            </div>

            {draft.stages.map((s, i) => (
              <div
                key={i}
                class={badStages.has(i) ? "stage invalid" : "stage"}
                style={badStages.has(i) ? undefined : { borderLeftColor: colourFor(s.name, draft.stages.map((x) => x.name)) }}
                data-testid="stage"
                data-name={s.name}
              >
                <div class="stage-head">
                  <input
                    class="stage-name"
                    data-testid="stage-rename"
                    aria-label="stage name"
                    value={s.name}
                    onChange={(e) => updateStage(i, { ...s, name: e.currentTarget.value.trim() })}
                  />
                  <span class="muted">
                    {s.processor} · {dataTypeName(s.inputType)} → {dataTypeName(s.outputType)}
                  </span>
                  <button class="link danger" data-testid="stage-remove" onClick={() => removeStage(i)}>
                    Remove
                  </button>
                </div>
                <div class="parents">
                  <span class="muted">Parents:</span>
                  {draft.stages.length < 2 && <span class="muted">none (takes the frames)</span>}
                  {draft.stages.map((other, j) =>
                    j === i ? null : (
                      <label key={j} class="check">
                        <input
                          type="checkbox"
                          data-testid="stage-parent"
                          data-parent={other.name}
                          checked={s.parents.includes(other.name)}
                          onChange={(e) => toggleParent(i, other.name, e.currentTarget.checked)}
                        />
                        {other.name}
                      </label>
                    ),
                  )}
                </div>
              </div>
            ))}

            <div class="form-actions">
              <button
                class="primary"
                data-testid="pipeline-save"
                disabled={draft.name === "" || draft.stages.length === 0}
                onClick={() => void save()}
              >
                Save pipeline
              </button>
              {saved && (
                <span class="ok" data-testid="pipeline-saved">
                  {saved}
                </span>
              )}
            </div>
            <ErrorBox error={saveError} testid="pipeline-save-error" />
          </div>

          <div class="dag-panel">
            <h3>DAG</h3>
            <DagView testid="dag-view" stages={draft.stages} />
            <h3 class="spaced">Validation</h3>
            <div class="violations" data-testid="pipeline-violations" data-state={validationState(violations, validating)}>
              <ErrorBox error={validateError} testid="pipeline-validate-error" />
              {violations === undefined ? (
                <div class="muted">Name the pipeline and add stages: the backend checks every edit.</div>
              ) : violations.length === 0 ? (
                <div class="ok">{validating ? "Checking…" : "Valid pipeline."}</div>
              ) : (
                <ul>
                  {violations.map((v, i) => (
                    <li key={i} data-testid="violation" data-field={v.field}>
                      <code>{v.field}</code> {v.description}
                    </li>
                  ))}
                </ul>
              )}
            </div>
          </div>
        </div>
      </section>
    </>
  );
}

function toPipeline(draft: Draft): Pipeline {
  return create(PipelineSchema, { name: draft.name.trim(), stages: draft.stages });
}

function validationState(violations: FieldViolation[] | undefined, validating: boolean): string {
  if (validating) return "checking";
  if (violations === undefined) return "idle";
  return violations.length === 0 ? "valid" : "invalid";
}
