// A policy chosen by name with optional parameters typed as JSON (PolicySpec.params, a
// google.protobuf.Struct: a JSON object). Shared by the install form and each stream's
// "Change policy".
import type { JsonObject } from "@bufbuild/protobuf";

export interface PolicyDraft {
  name: string;
  params: string;
}

/** The params text as a JSON object ({} when empty), or an error message to show before sending. */
export function parseParams(text: string): { params: JsonObject } | { error: string } {
  if (text.trim() === "") return { params: {} };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { error: `params: not valid JSON: ${(err as Error).message}` };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { error: "params: must be a JSON object, e.g. {\"fps\": 5}" };
  }
  return { params: value as JsonObject };
}

export function PolicyInputs(props: {
  policies: string[];
  value: PolicyDraft;
  onChange: (value: PolicyDraft) => void;
  /** Prefix of the test ids: PREFIX-policy, PREFIX-policy-params, PREFIX-policy-params-error. */
  testid: string;
}) {
  const { value } = props;
  const parsed = parseParams(value.params);
  return (
    <>
      <label>
        Policy
        <select
          data-testid={`${props.testid}-policy`}
          value={value.name}
          onChange={(e) => props.onChange({ ...value, name: e.currentTarget.value })}
        >
          {props.policies.map((p) => (
            <option key={p} value={p}>
              {p}
            </option>
          ))}
        </select>
      </label>
      <label class="wide">
        Policy parameters (JSON, optional)
        <textarea
          rows={2}
          spellcheck={false}
          placeholder='{"key": "value"}'
          data-testid={`${props.testid}-policy-params`}
          value={value.params}
          onInput={(e) => props.onChange({ ...value, params: e.currentTarget.value })}
        />
        {"error" in parsed && (
          <span class="error inline" data-testid={`${props.testid}-policy-params-error`}>
            {parsed.error}
          </span>
        )}
      </label>
    </>
  );
}
