// Bundles the console (src/main.tsx and the CSS it imports) with esbuild into OUT_DIR:
// index.html, console.js, console.css; minified, no source maps, byte-for-byte the same on every
// machine for the same sources and lock file (hack/build-console.sh compares it with the committed copy).
//   node build.mjs OUT_DIR
import { copyFileSync, mkdirSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
if (process.argv.length !== 3) {
  console.error("usage: node build.mjs OUT_DIR");
  process.exit(2);
}
const out = resolve(process.argv[2]);

// The generated messages in ../gen/ts import @bufbuild/protobuf, which Node would look for in
// gen/ts/node_modules (absent, or a second copy). Resolve it from here, so that one copy is bundled.
const protobufFromConsole = {
  name: "protobuf-from-console",
  setup(build) {
    build.onResolve({ filter: /^@bufbuild\/protobuf(\/|$)/ }, (args) => {
      if (args.pluginData === "protobuf-from-console") return undefined;
      return build.resolve(args.path, {
        kind: args.kind,
        resolveDir: here,
        pluginData: "protobuf-from-console",
      });
    });
  },
};

mkdirSync(out, { recursive: true });
await esbuild.build({
  absWorkingDir: here,
  entryPoints: { console: "src/main.tsx" },
  outdir: out,
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020", "chrome100", "firefox100", "safari15"],
  jsx: "automatic",
  jsxImportSource: "preact",
  charset: "utf8",
  legalComments: "eof",
  sourcemap: false,
  logLevel: "warning",
  plugins: [protobufFromConsole],
});
copyFileSync(join(here, "src/index.html"), join(out, "index.html"));
for (const name of ["index.html", "console.js", "console.css"]) {
  console.log(`${name.padEnd(12)} ${(statSync(join(out, name)).size / 1024).toFixed(1)} KiB`);
}
