// The shell: logs in (token from the URL fragment, sessionStorage or the login form), then shows the
// navigation bar and the page the hash names (#/pipelines, #/results/STREAM, ...).
import { Code, ConnectError } from "@connectrpc/connect";
import type { ComponentType } from "preact";
import { useEffect, useState } from "preact/hooks";
import type { DescribeMeshResponse } from "../../gen/ts/dayu/v1/backend_pb.ts";
import {
  backend,
  clearToken,
  getToken,
  setToken,
  setUnauthenticatedHandler,
  takeTokenFromFragment,
} from "./api.ts";
import { Loading } from "./components/common.tsx";
import { Export } from "./pages/Export.tsx";
import { Login } from "./pages/Login.tsx";
import { Pipelines } from "./pages/Pipelines.tsx";
import { Results } from "./pages/Results.tsx";
import { Sources } from "./pages/Sources.tsx";
import { Streams } from "./pages/Streams.tsx";
import { System } from "./pages/System.tsx";

export interface PageProps {
  mesh: DescribeMeshResponse;
  /** What follows the page in the hash: #/results/cam-1 gives "cam-1". */
  param: string;
  /**
   * Reads DescribeMesh again and hands the new mesh to every page (after a source is added or
   * deleted); rejects with the call's error, the mesh shown staying as it was.
   */
  refreshMesh: () => Promise<void>;
}

const PAGES: { id: string; title: string; view: ComponentType<PageProps> }[] = [
  { id: "pipelines", title: "Pipelines", view: Pipelines },
  { id: "sources", title: "Sources", view: Sources },
  { id: "streams", title: "Streams", view: Streams },
  { id: "results", title: "Results", view: Results },
  { id: "system", title: "System", view: System },
  { id: "export", title: "Export", view: Export },
];

type Auth =
  | { state: "checking" }
  | { state: "login"; error?: unknown; token?: string }
  | { state: "in"; mesh: DescribeMeshResponse };

function route(): { page: string; param: string } {
  const [page = "", ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  return { page, param: decodeURIComponent(rest.join("/")) };
}

export function App() {
  const [auth, setAuth] = useState<Auth>({ state: "checking" });
  const [where, setWhere] = useState(route);

  async function logIn(token: string) {
    setToken(token);
    setAuth({ state: "checking" });
    try {
      const mesh = await backend.describeMesh({});
      setAuth({ state: "in", mesh });
    } catch (err) {
      clearToken();
      const refused = err instanceof ConnectError && err.code === Code.Unauthenticated;
      setAuth({ state: "login", error: refused ? "token refused" : err, token });
    }
  }

  async function refreshMesh() {
    const mesh = await backend.describeMesh({});
    setAuth((now) => (now.state === "in" ? { state: "in", mesh } : now));
  }

  function logOut() {
    clearToken();
    setAuth({ state: "login" });
  }

  useEffect(() => {
    setUnauthenticatedHandler(() => {
      clearToken();
      setAuth({ state: "login", error: "token refused" });
    });
    // A #token= link opened in a tab that already shows the console changes only the hash.
    const onHash = () => {
      const token = takeTokenFromFragment();
      if (token) void logIn(token);
      setWhere(route());
    };
    window.addEventListener("hashchange", onHash);
    const token = takeTokenFromFragment() || getToken();
    if (token) void logIn(token);
    else setAuth({ state: "login" });
    return () => window.removeEventListener("hashchange", onHash);
  }, []);

  if (auth.state === "checking") return <Loading what="the mesh" />;
  if (auth.state === "login") return <Login error={auth.error} token={auth.token} onSubmit={logIn} />;

  const page = PAGES.find((p) => p.id === where.page) ?? PAGES[0]!;
  const View = page.view;
  const { nodes, sources } = auth.mesh;
  return (
    <div class="shell">
      <header>
        <span class="brand">Dayu</span>
        <nav data-testid="nav">
          {PAGES.map((p) => (
            <a key={p.id} href={`#/${p.id}`} class={p.id === page.id ? "active" : ""} data-testid={`nav-${p.id}`}>
              {p.title}
            </a>
          ))}
        </nav>
        <span class="mesh-summary" data-testid="mesh-summary">
          {nodes.length} nodes · {sources.length} sources
        </span>
        <button class="link" data-testid="logout" onClick={logOut}>
          Log out
        </button>
      </header>
      <main data-testid={`page-${page.id}`}>
        <View
          key={page.id}
          mesh={auth.mesh}
          param={page.id === where.page ? where.param : ""}
          refreshMesh={refreshMesh}
        />
      </main>
    </div>
  );
}
