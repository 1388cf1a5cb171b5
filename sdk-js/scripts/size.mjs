// Prints the size of the minified bundle, raw and gzipped (run after `npm run build`).
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const min = readFileSync(new URL("../dist/herald.min.js", import.meta.url));
const gz = gzipSync(min, { level: 9 });
console.log(`dist/herald.min.js: ${min.length} bytes minified, ${gz.length} bytes gzipped`);
