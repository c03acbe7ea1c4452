// The bundle's tokenizer.json (BertNormalizer + BertPreTokenizer + WordPiece + [CLS] … [SEP]),
// reproduced in plain JS so the page needs nothing from a CDN. Checked id for id against the Python
// `tokenizers` library on every built-in example (tests/e2e/test_web_client.py).

const CHINESE = [
  [0x4e00, 0x9fff], [0x3400, 0x4dbf], [0x20000, 0x2a6df], [0x2a700, 0x2b73f],
  [0x2b740, 0x2b81f], [0x2b920, 0x2ceaf], [0xf900, 0xfaff], [0x2f800, 0x2fa1f],
];
const isChinese = (cp) => CHINESE.some(([lo, hi]) => cp >= lo && cp <= hi);
const isWhitespace = (ch) => /^\s$/u.test(ch);
const isControl = (ch) => !"\t\n\r".includes(ch) && /^\p{C}$/u.test(ch);
// ASCII punctuation (Rust's is_ascii_punctuation, which includes symbols like $ + < = > ^ ` | ~) or Unicode P*.
const isPunctuation = (ch) => {
  const cp = ch.codePointAt(0);
  const ascii = (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126);
  return ascii || /^\p{P}$/u.test(ch);
};

export class WordPieceTokenizer {
  /** @param {object} json the parsed tokenizer.json */
  constructor(json) {
    const model = json.model;
    if (!model || model.type !== "WordPiece") {
      throw new Error(`tokenizer.json has a ${model && model.type} model; this page reads WordPiece (BERT) only`);
    }
    this.vocab = new Map(Object.entries(model.vocab));
    this.unk = model.unk_token;
    this.prefix = model.continuing_subword_prefix ?? "##";
    this.maxChars = model.max_input_chars_per_word ?? 100;
    const norm = json.normalizer ?? {};
    this.lowercase = norm.lowercase ?? true;
    this.stripAccents = norm.strip_accents ?? this.lowercase; // tokenizers: None follows lowercase
    this.cleanText = norm.clean_text ?? true;
    this.chineseChars = norm.handle_chinese_chars ?? true;
    this.cls = this.id("[CLS]");
    this.sep = this.id("[SEP]");
    this.pad = json.padding?.pad_id ?? this.id("[PAD]");
    // Added (special) tokens are matched in the raw text before anything else, as `tokenizers` does.
    this.added = (json.added_tokens ?? []).map((t) => [t.content, t.id]).sort((a, b) => b[0].length - a[0].length);
  }

  id(token) {
    const i = this.vocab.get(token);
    if (i === undefined) throw new Error(`tokenizer.json has no ${token} token`);
    return i;
  }

  normalize(text) {
    let out = "";
    for (const ch of text) {
      const cp = ch.codePointAt(0);
      if (this.cleanText && (cp === 0 || cp === 0xfffd || isControl(ch))) continue;
      if (this.cleanText && isWhitespace(ch)) out += " ";
      else if (this.chineseChars && isChinese(cp)) out += ` ${ch} `;
      else out += ch;
    }
    if (this.stripAccents) out = out.normalize("NFD").replace(/\p{Mn}/gu, "");
    if (this.lowercase) out = out.toLowerCase();
    return out;
  }

  preTokenize(text) {
    const words = [];
    let word = "";
    for (const ch of text) {
      if (isWhitespace(ch)) {
        if (word) words.push(word);
        word = "";
      } else if (isPunctuation(ch)) {
        if (word) words.push(word);
        words.push(ch);
        word = "";
      } else word += ch;
    }
    if (word) words.push(word);
    return words;
  }

  wordPiece(word) {
    const chars = Array.from(word);
    if (chars.length > this.maxChars) return [this.id(this.unk)];
    const ids = [];
    let start = 0;
    while (start < chars.length) {
      let end = chars.length;
      let found;
      while (start < end) {
        const piece = (start > 0 ? this.prefix : "") + chars.slice(start, end).join("");
        found = this.vocab.get(piece);
        if (found !== undefined) break;
        end -= 1;
      }
      if (found === undefined) return [this.id(this.unk)];
      ids.push(found);
      start = end;
    }
    return ids;
  }

  /** Token ids of `text` without special tokens. */
  tokens(text) {
    const ids = [];
    for (const [segment, addedId] of this.splitAdded(text)) {
      if (addedId !== undefined) ids.push(addedId);
      else for (const word of this.preTokenize(this.normalize(segment))) ids.push(...this.wordPiece(word));
    }
    return ids;
  }

  splitAdded(text) {
    const parts = [];
    let rest = text;
    while (rest) {
      let best = null;
      for (const [content, id] of this.added) {
        const at = rest.indexOf(content);
        if (at >= 0 && (best === null || at < best[0])) best = [at, content, id];
      }
      if (best === null) break;
      if (best[0] > 0) parts.push([rest.slice(0, best[0]), undefined]);
      parts.push([best[1], best[2]]);
      rest = rest.slice(best[0] + best[1].length);
    }
    if (rest) parts.push([rest, undefined]);
    return parts;
  }

  /** input_ids and attention_mask of every text: [CLS] tokens [SEP], truncated, padded to `maxLength`. */
  encode(texts, maxLength) {
    const ids = new BigInt64Array(texts.length * maxLength);
    const mask = new BigInt64Array(texts.length * maxLength);
    texts.forEach((text, row) => {
      const seq = [this.cls, ...this.tokens(text).slice(0, maxLength - 2), this.sep];
      for (let j = 0; j < maxLength; j++) {
        ids[row * maxLength + j] = BigInt(j < seq.length ? seq[j] : this.pad);
        mask[row * maxLength + j] = j < seq.length ? 1n : 0n;
      }
    });
    return { input_ids: ids, attention_mask: mask };
  }
}
