// Run a TF.js graph model with the ORIGINAL runtime (pure-JS `@tensorflow/tfjs`, CPU backend)
// on a raw float32 NHWC input and write the chosen output node as raw float32.
//
// It is the reference side of tests/test_convert_tfjs.py: the torch converter must reproduce
// what this prints, so it does nothing clever: load model.json + its .bin shards from disk,
// execute, dump.
//
// Usage:
//   node tfjs_embed.mjs --modules DIR/node_modules --model path/model.json \
//        --input in.f32 --shape B,H,W,C --output-node NAME --out out.f32
//
// --modules is the node_modules folder @tensorflow/tfjs was installed into (a cache outside
// the repository, so an ESM `import` cannot find it by itself: we resolve it with createRequire).
// On success it writes out.f32 (little-endian float32, C order) and prints one JSON line
// {"shape": [...], "node": NAME, "backend": "cpu"} on stdout.

import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    modules: { type: 'string' },
    model: { type: 'string' },
    input: { type: 'string' },
    shape: { type: 'string' },
    'output-node': { type: 'string' },
    out: { type: 'string' },
  },
});
for (const key of ['modules', 'model', 'input', 'shape', 'output-node', 'out']) {
  if (!args[key]) {
    console.error(`tfjs_embed.mjs: missing --${key}`);
    process.exit(2);
  }
}

const require = createRequire(join(args.modules, 'noop.js'));
const tf = require('@tensorflow/tfjs');

// Copy a Node Buffer into a standalone ArrayBuffer (a Buffer may be a view into a shared pool).
function toArrayBuffer(buf) {
  return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
}

// The model's weights: every manifest group's shards, concatenated in manifest order; this is
// exactly the layout tf.io expects for `weightData` next to the flattened `weightSpecs`.
function loadArtifacts(modelPath) {
  const model = JSON.parse(readFileSync(modelPath, 'utf8'));
  const base = dirname(modelPath);
  const shards = [];
  const weightSpecs = [];
  for (const group of model.weightsManifest) {
    for (const p of group.paths) shards.push(readFileSync(join(base, p)));
    weightSpecs.push(...group.weights);
  }
  return {
    modelTopology: model.modelTopology,
    format: model.format,
    generatedBy: model.generatedBy,
    convertedBy: model.convertedBy,
    signature: model.signature,
    userDefinedMetadata: model.userDefinedMetadata,
    weightSpecs,
    weightData: toArrayBuffer(Buffer.concat(shards)),
  };
}

async function main() {
  // The pure-JS CPU kernels: no WebGL in Node, no tfjs-node native binding.
  await tf.setBackend('cpu');
  await tf.ready();

  const model = await tf.loadGraphModel(tf.io.fromMemory(loadArtifacts(args.model)));
  const shape = args.shape.split(',').map(Number);
  const raw = readFileSync(args.input);
  const data = new Float32Array(toArrayBuffer(raw));
  const expected = shape.reduce((a, b) => a * b, 1);
  if (data.length !== expected) {
    throw new Error(`input has ${data.length} floats, shape ${shape} needs ${expected}`);
  }
  const input = tf.tensor(data, shape, 'float32');
  const output = model.execute(input, args['output-node']);
  const values = await output.data();
  writeFileSync(args.out, Buffer.from(values.buffer, values.byteOffset, values.byteLength));
  console.log(JSON.stringify({ shape: output.shape, node: args['output-node'], backend: tf.getBackend() }));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
