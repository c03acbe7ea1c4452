// Module weights on the wire, as runtime/wire.py: a safetensors file, tensors in the manifest's order,
// fp32 or fp16 as the manifest's wire_dtype says.

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE half (bits) from a float, round to nearest even, as numpy's astype(float16). */
function toHalf(value) {
  f32[0] = value;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = mant >>> shift;
    const rest = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    return sign | (half + (rest > mid || (rest === mid && half & 1) ? 1 : 0));
  }
  const half = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  return sign | (half + (rest > 0x1000 || (rest === 0x1000 && half & 1) ? 1 : 0));
}

function fromHalf(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** tensors: [{name, shape, data: Float32Array}] -> safetensors bytes in `dtype` ("float32" | "float16"). */
export function encodeSafetensors(tensors, dtype) {
  const size = dtype === "float16" ? 2 : 4;
  const header = {};
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: size === 2 ? "F16" : "F32", shape: t.shape, data_offsets: [offset, offset + t.data.length * size] };
    offset += t.data.length * size;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8); // the format pads the header to 8 bytes with spaces
  const head = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + head.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  let at = 8 + head.length;
  for (const t of tensors) {
    if (size === 4) out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), at);
    else {
      const view = new DataView(out.buffer, at, t.data.length * 2);
      t.data.forEach((v, i) => view.setUint16(i * 2, toHalf(v), true));
    }
    at += t.data.length * size;
  }
  return out;
}

/** safetensors bytes -> Map name -> {shape, data: Float32Array}; F16 is widened to float32. */
export function decodeSafetensors(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  const out = new Map();
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [start, end] = info.data_offsets;
    const raw = bytes.slice(8 + n + start, 8 + n + end);
    let data;
    if (info.dtype === "F32") data = new Float32Array(raw.buffer);
    else if (info.dtype === "F16") data = Float32Array.from(new Uint16Array(raw.buffer), fromHalf);
    else throw new Error(`module tensor ${name} is ${info.dtype}; the page reads F32 and F16`);
    out.set(name, { shape: info.shape, data });
  }
  return out;
}
