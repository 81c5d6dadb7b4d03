// The backend's Connect API: one transport (JSON over the page's own origin), one client, and the
// operator's bearer token, kept in sessionStorage for the tab's life.
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { BackendService } from "../../gen/ts/dayu/v1/backend_pb.ts";

const TOKEN_KEY = "dayu.token";

export function getToken(): string {
  return sessionStorage.getItem(TOKEN_KEY) ?? "";
}

export function setToken(token: string): void {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken(): void {
  sessionStorage.removeItem(TOKEN_KEY);
}

/**
 * The token of a `#token=XYZ` fragment (what `dayu up` prints), or "" when there is none; the
 * fragment is taken off the address bar so that it is neither bookmarked nor shared.
 */
export function takeTokenFromFragment(): string {
  const match = /^#token=([^&]*)/.exec(location.hash);
  if (!match) return "";
  history.replaceState(null, "", location.pathname + location.search);
  try {
    return decodeURIComponent(match[1] ?? "");
  } catch {
    return match[1] ?? "";
  }
}

/** Called when the backend refuses the token mid-session (it was revoked, or the backend restarted). */
let onUnauthenticated: () => void = () => {};

export function setUnauthenticatedHandler(handler: () => void): void {
  onUnauthenticated = handler;
}

const auth: Interceptor = (next) => async (req) => {
  req.header.set("Authorization", `Bearer ${getToken()}`);
  try {
    return await next(req);
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.Unauthenticated && getToken() !== "") {
      onUnauthenticated();
    }
    throw err;
  }
};

const transport = createConnectTransport({
  baseUrl: location.origin + location.pathname.replace(/\/[^/]*$/, "") || location.origin,
  useBinaryFormat: false,
  interceptors: [auth],
});

export const backend: Client<typeof BackendService> = createClient(BackendService, transport);

/** What the backend said, as it said it (it names the field): ConnectError.rawMessage. */
export function errorMessage(err: unknown): string {
  return ConnectError.from(err).rawMessage;
}

/** The gRPC code of an error, as its lower-case name ("permission_denied"), for styling and tests. */
export function errorCode(err: unknown): string {
  const code = ConnectError.from(err).code;
  return (Code[code] ?? "unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

/** True for the error an AbortController's abort() makes a call end with. */
export function isAbort(err: unknown, signal?: AbortSignal): boolean {
  return signal?.aborted === true || ConnectError.from(err).code === Code.Canceled;
}

/** Every page of a paged list call (page_size 1000, page_token from next_page_token). */
export async function listAll<T>(
  page: (pageToken: string) => Promise<{ items: T[]; nextPageToken: string }>,
): Promise<T[]> {
  const all: T[] = [];
  let token = "";
  do {
    const reply = await page(token);
    all.push(...reply.items);
    token = reply.nextPageToken;
  } while (token !== "");
  return all;
}

export async function listPipelines() {
  return listAll(async (pageToken) => {
    const r = await backend.listPipelines({ pageSize: 1000, pageToken });
    return { items: r.pipelines, nextPageToken: r.nextPageToken };
  });
}

export async function listInstalledStreams() {
  return listAll(async (pageToken) => {
    const r = await backend.listInstalledStreams({ pageSize: 1000, pageToken });
    return { items: r.streams, nextPageToken: r.nextPageToken };
  });
}
