// Reads {"batches": [{input_ids, attention_mask: rows of ints, labels}]} on stdin; prints each batch as the
// page's trainer feeds it after length bucketing (trimPadding of the built page), as rows of ints.
import { readFileSync } from "node:fs";
import { trimPadding } from "../../fedserver/web/trainer.js";

const job = JSON.parse(readFileSync(0, "utf8"));
const tensor = (rows) => ({ data: BigInt64Array.from(rows.flat(), BigInt), dims: [rows.length, rows[0].length] });
const rows = ({ data, dims }) => Array.from({ length: dims[0] }, (_, r) => Array.from(data.subarray(r * dims[1], (r + 1) * dims[1]), Number));
const out = job.batches.map((b) => {
  const t = trimPadding({ input_ids: tensor(b.input_ids), attention_mask: tensor(b.attention_mask), labels: BigInt64Array.from(b.labels, BigInt) });
  return { input_ids: rows(t.input_ids), attention_mask: rows(t.attention_mask), labels: Array.from(t.labels, Number) };
});
process.stdout.write(JSON.stringify(out));
