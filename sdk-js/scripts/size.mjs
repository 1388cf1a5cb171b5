// Prints the size of the minified bundle, raw and gzipped (run after `npm run build`),
// and fails when the gzipped size is over the budget.
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const BUDGET_GZIP = 4160;
const min = readFileSync(new URL("../dist/herald.min.js", import.meta.url));
const gz = gzipSync(min, { level: 9 });
console.log(`dist/herald.min.js: ${min.length} bytes minified, ${gz.length} bytes gzipped (budget ${BUDGET_GZIP})`);
if (gz.length > BUDGET_GZIP) {
  console.error(`over the size budget by ${gz.length - BUDGET_GZIP} bytes gzipped`);
  process.exit(1);
}
