// Validates dashboards/grafana/specd.json against Grafana's dashboard schema: the TypeScript
// types that @grafana/schema (Grafana's own package) generates from it. The JSON is written
// into a TypeScript file as an object literal typed `Dashboard`, and the compiler checks it:
// a missing required field, a field of the wrong type and a field the schema does not have
// (excess property checks on object literals) are all errors.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const file = resolve(process.argv[2] ?? join(here, "../grafana/specd.json"));
const dashboard = JSON.parse(readFileSync(file, "utf8"));
const dir = mkdtempSync(join(tmpdir(), "specd-dashboard-"));
const ts = join(dir, "dashboard.ts");
writeFileSync(
  ts,
  `import type { Dashboard } from "${join(here, "node_modules/@grafana/schema")}";\n` +
    `export const dashboard: Dashboard = ${JSON.stringify(dashboard, null, 2)};\n`,
);
try {
  execFileSync(
    join(here, "node_modules/.bin/tsc"),
    ["--noEmit", "--strict", "--skipLibCheck", "--target", "es2022", "--module", "nodenext",
     "--moduleResolution", "nodenext", ts],
    { stdio: "inherit" },
  );
} catch {
  console.error(`${file} does not match Grafana's dashboard schema (@grafana/schema); the errors above name the fields`);
  process.exit(1);
}
console.log(`${file}: matches Grafana's dashboard schema (@grafana/schema ${JSON.parse(readFileSync(join(here, "node_modules/@grafana/schema/package.json"), "utf8")).version})`);
