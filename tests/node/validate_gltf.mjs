// Validate one .glb/.gltf with the Khronos glTF-Validator and print its report as JSON.
// Usage: node tests/node/validate_gltf.mjs VALIDATOR_DIR FILE
// VALIDATOR_DIR is the npm prefix the validator was installed into (see .ci/run).
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [prefix, file] = process.argv.slice(2);
const require = createRequire(path.resolve(prefix, "package.json"));
const validator = require("gltf-validator");
const bytes = new Uint8Array(fs.readFileSync(file));
const report = await validator.validateBytes(bytes, {
  uri: path.basename(file),
  maxIssues: 0,
  // A .glb made by the project carries everything inside it; any external reference is an error.
  externalResourceFunction: (uri) => Promise.reject(new Error(`external resource ${uri}`)),
});
process.stdout.write(JSON.stringify(report, null, 1) + "\n");
