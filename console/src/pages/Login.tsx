// The login view: a bearer token (admin or read-only), checked with DescribeMesh.
import { useState } from "preact/hooks";
import { errorCode, errorMessage } from "../api.ts";

export function Login(props: { error?: unknown; token?: string; onSubmit: (token: string) => void }) {
  const [token, setToken] = useState(props.token ?? "");
  const message = typeof props.error === "string" ? props.error : props.error ? errorMessage(props.error) : "";
  const code = typeof props.error === "string" ? "unauthenticated" : props.error ? errorCode(props.error) : "";
  return (
    <div class="login">
      <form
        class="card"
        data-testid="login-form"
        onSubmit={(e) => {
          e.preventDefault();
          if (token.trim()) props.onSubmit(token.trim());
        }}
      >
        <h1>Dayu console</h1>
        <p class="muted">
          Paste the token <code>dayu up</code> printed (or open the link it printed).
        </p>
        <label>
          Token
          <input
            type="password"
            autoComplete="off"
            autoFocus
            data-testid="login-token"
            value={token}
            onInput={(e) => setToken(e.currentTarget.value)}
          />
        </label>
        <button type="submit" class="primary" data-testid="login-submit" disabled={!token.trim()}>
          Log in
        </button>
        {message && (
          <div class="error" role="alert" data-testid="login-error" data-code={code}>
            {message}
          </div>
        )}
      </form>
    </div>
  );
}
