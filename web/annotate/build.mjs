// Builds the page into the Python package (grounded/annotate/static): the page's own files and
// onnxruntime-web's WebAssembly build (SIMD + threads) from node_modules, installed by `npm ci`
// from package-lock.json. bin/build-web runs it when its inputs changed (a stamp of them is kept).
import { copyFileSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "..", "grounded", "annotate", "static");
const ort = join(here, "node_modules", "onnxruntime-web", "dist");
const ORT_FILES = ["ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"];

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "ort"), { recursive: true });
for (const name of readdirSync(join(here, "src"))) copyFileSync(join(here, "src", name), join(out, name));
for (const name of ORT_FILES) copyFileSync(join(ort, name), join(out, "ort", name));
console.log(`built the annotation page into ${out}`);
