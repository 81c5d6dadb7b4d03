// Small pieces the pages share: an error line, a loading line, a percentage bar, a button that asks
// to be clicked twice.
import { useState } from "preact/hooks";
import { errorCode, errorMessage } from "../api.ts";

/** The backend's message for a failed call (it names the field), or nothing when there is no error. */
export function ErrorBox(props: { error: unknown; testid: string }) {
  if (props.error === undefined || props.error === null) return null;
  return (
    <div class="error" role="alert" data-testid={props.testid} data-code={errorCode(props.error)}>
      {errorMessage(props.error)}
    </div>
  );
}

export function Loading(props: { what?: string }) {
  return <div class="loading">Loading{props.what ? ` ${props.what}` : ""}…</div>;
}

/** A horizontal bar filled to `fraction` (0..1), green then amber then red. */
export function Bar(props: { fraction: number; title?: string }) {
  const f = Math.min(1, Math.max(0, Number.isFinite(props.fraction) ? props.fraction : 0));
  const level = f >= 0.9 ? "high" : f >= 0.7 ? "mid" : "low";
  return (
    <span class={`bar ${level}`} title={props.title}>
      <span style={{ width: `${(f * 100).toFixed(1)}%` }} />
    </span>
  );
}

/**
 * A button for a destructive action: the first click asks "Sure?", the second (on the confirm
 * button, test id `${testid}-confirm`) runs it.
 */
export function ConfirmButton(props: { label: string; testid: string; disabled?: boolean; onConfirm: () => void }) {
  const [asking, setAsking] = useState(false);
  if (!asking) {
    return (
      <button class="danger" data-testid={props.testid} disabled={props.disabled} onClick={() => setAsking(true)}>
        {props.label}
      </button>
    );
  }
  return (
    <span class="confirm">
      <button
        class="danger"
        data-testid={`${props.testid}-confirm`}
        onClick={() => {
          setAsking(false);
          props.onConfirm();
        }}
      >
        {props.label}: sure?
      </button>
      <button class="link" onClick={() => setAsking(false)}>
        Cancel
      </button>
    </span>
  );
}
