// Reads {"tokenizer": path, "texts": [...], "max_length": n} on stdin, prints the page tokenizer's ids.
import { readFileSync } from "node:fs";
import { WordPieceTokenizer } from "../../android_demo/web/src/tokenizer.js";

const job = JSON.parse(readFileSync(0, "utf8"));
const tok = new WordPieceTokenizer(JSON.parse(readFileSync(job.tokenizer, "utf8")));
const { input_ids } = tok.encode(job.texts, job.max_length);
const rows = job.texts.map((_, i) => Array.from(input_ids.slice(i * job.max_length, (i + 1) * job.max_length), Number));
process.stdout.write(JSON.stringify(rows));
