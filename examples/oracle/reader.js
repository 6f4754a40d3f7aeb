// A conformance reader in JavaScript (node, no packages): checks its own hessian,
// accumulate_hessian, dgs_group_sizes, ipr_ratios and reconstruction_error against an oracle
// export (docs/oracle.md).
//
//   node examples/oracle/reader.js golden/
//
// One line per case; exit 0 when all pass, 1 when any fails, 2 on bad input.
"use strict";
const fs = require("fs");
const path = require("path");

// an array of the case from its .npy, at the offset case.json gives: {data, shape}
function load(dir, entry, key) {
  const rec = entry.arrays[key];
  const buf = fs.readFileSync(path.join(dir, rec.file));
  const n = rec.shape.reduce((a, b) => a * b, 1);
  if (buf.length !== rec.offset + 8 * n) throw new Error(`${rec.file}: ${buf.length} bytes, expected ${rec.offset + 8 * n}`);
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    data[i] = rec.dtype === "<i8" ? Number(buf.readBigInt64LE(rec.offset + 8 * i)) : buf.readDoubleLE(rec.offset + 8 * i);
  }
  return { data, shape: rec.shape };
}

// |a - e| <= atol + rtol |e| for every element, with the output's float64 tolerances
function close(entry, name, actual, expected) {
  const { rtol, atol } = entry.outputs.find((o) => o.name === name).tolerances.float64;
  return expected.data.length === actual.length &&
    expected.data.every((e, i) => Math.abs(actual[i] - e) <= atol + rtol * Math.abs(e));
}

// (n_seen H_old + 2 XᵀX) / (n_seen + n)
function hessian(X, H_old, n_seen) {
  const [n, d] = X.shape, H = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = 0; j < d; j++) {
      let s = 0;
      for (let t = 0; t < n; t++) s += X.data[t * d + i] * X.data[t * d + j];
      H[i * d + j] = ((H_old ? n_seen * H_old.data[i * d + j] : 0) + 2 * s) / (n_seen + n);
    }
  }
  return H;
}

function dgs(T) {
  const sizes = [];
  let b = Math.floor((T - 512) / 2), left = T;
  while (left > 0) {
    const g = Math.min(left, Math.max(b, 64), 1024);
    sizes.push(g);
    left -= g;
    b = Math.floor((b - 512) / 2);
  }
  return sizes;
}

function ipr(n, first, last, strategy) {
  if (first > last || (strategy === "uniform" && first !== last)) throw new Error("invalid_argument");
  const base = strategy.replace("-decrease", "");
  return Array.from({ length: n }, (_, i) => {
    const j = strategy.endsWith("-decrease") ? n - 1 - i : i;
    const shape = n === 1 ? 0 : base === "log" ? Math.log(j + 1) / Math.log(n) : j / (n - 1);
    return strategy === "uniform" ? first : first + (last - first) * shape;
  });
}

// true pass, false fail, null not an operation of this reader
function checkCase(dir, entry) {
  const a = entry.arguments;
  switch (entry.operation) {
    case "hessian":
      return close(entry, "H", hessian(load(dir, entry, "in.X"), null, 0), load(dir, entry, "out.H"));
    case "accumulate_hessian": {
      const X = load(dir, entry, "in.X"), H = a.H === null ? null : load(dir, entry, "in.H");
      return close(entry, "H", hessian(X, H, a.n_seen), load(dir, entry, "out.H")) &&
        load(dir, entry, "out.n_seen").data[0] === a.n_seen + X.shape[0];
    }
    case "dgs_group_sizes":
      return JSON.stringify(dgs(a.n_prune)) === JSON.stringify(Array.from(load(dir, entry, "out.group_sizes").data));
    case "ipr_ratios": {
      let r;
      try { r = ipr(a.n_layers, a.first, a.last, a.strategy); } catch (e) { return entry.error_kind === e.message; }
      return !entry.raises && close(entry, "ratios", r, load(dir, entry, "out.ratios"));
    }
    case "reconstruction_error": {
      const W = load(dir, entry, "in.W"), Wn = load(dir, entry, "in.W_new"), H = load(dir, entry, "in.H");
      const [r, d] = W.shape;
      let err = 0;
      for (let o = 0; o < r; o++) {
        for (let i = 0; i < d; i++) {
          for (let j = 0; j < d; j++) {
            err += (W.data[o * d + i] - Wn.data[o * d + i]) * H.data[i * d + j] * (W.data[o * d + j] - Wn.data[o * d + j]);
          }
        }
      }
      return close(entry, "error", [0.5 * err], load(dir, entry, "out.error"));
    }
    default:
      return null;
  }
}

function main() {
  if (process.argv.length !== 3) { console.error("usage: node reader.js EXPORT_DIR"); return 2; }
  const root = process.argv[2];
  let index;
  try {
    index = JSON.parse(fs.readFileSync(path.join(root, "index.json"), "utf8"));
    if (index.format !== "slimgpt-oracle" || index.version !== 2) throw new Error("not format 2");
  } catch (e) {
    console.error(`reader.js: ${root} is not an oracle export of format 2 (${e.message})`);
    return 2;
  }
  let passed = 0, failed = 0;
  for (const entry of index.cases) {
    const ok = checkCase(path.join(root, entry.folder), entry);
    if (ok === null) continue;
    console.log(`${ok ? "pass" : "FAIL"} ${entry.id}`);
    ok ? passed++ : failed++;
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed || !passed ? 1 : 0;
}

process.exitCode = main();
