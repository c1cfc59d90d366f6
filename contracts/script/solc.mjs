// Runs the npm solc (solc-js) compiler on a standard-JSON input read from stdin and prints the output.
// Imports resolve against the repository's node_modules (OpenZeppelin) and the contracts folder.
import { readFileSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const contractsDir = path.resolve(here, "..");
const repoDir = path.resolve(contractsDir, "..");
const require = createRequire(path.join(repoDir, "package.json"));
const solc = require("solc");

function findImports(importPath) {
  const candidates = [path.join(repoDir, "node_modules", importPath), path.join(contractsDir, importPath)];
  for (const candidate of candidates) {
    if (existsSync(candidate)) return { contents: readFileSync(candidate, "utf8") };
  }
  return { error: `import not found: ${importPath}` };
}

const input = readFileSync(0, "utf8");
process.stdout.write(JSON.stringify({ version: solc.version(), output: JSON.parse(solc.compile(input, { import: findImports })) }));
