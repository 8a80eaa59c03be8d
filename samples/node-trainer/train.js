#!/usr/bin/env node
// Trains OrtFinetune's compiled artifacts (ortfinetune compile) with onnxruntime-node: no training API, only
// InferenceSession.run on training_model.onnx, optimizer_model.onnx and eval_model.onnx, driven by the contract in
// artifacts.json (docs/artifacts.md). The dataset is made here, deterministically from --seed.
//
//   node train.js --artifacts DIR [--steps 20] [--accumulation 2] [--lr 0.01] [--schedule cosine|linear|constant]
//                 [--warmup 0] [--min-lr 0] [--train-samples 256] [--eval-samples 64] [--batch-size 8] [--seed 1]
//                 [--threads 1] [--eval-every 0] [--out result.json] [--quiet]
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const ort = require('onnxruntime-node');

// ---------------------------------------------------------------- command line
function parseArgs(argv) {
  const o = {
    artifacts: null, steps: 20, accumulation: 2, lr: 0.01, schedule: 'cosine', warmup: 0, minLr: 0,
    trainSamples: 256, evalSamples: 64, batchSize: 8, seed: 1, threads: 1, evalEvery: 0, out: null, quiet: false,
  };
  const names = {
    '--artifacts': 'artifacts', '--steps': 'steps', '--accumulation': 'accumulation', '--lr': 'lr', '--schedule': 'schedule',
    '--warmup': 'warmup', '--min-lr': 'minLr', '--train-samples': 'trainSamples', '--eval-samples': 'evalSamples',
    '--batch-size': 'batchSize', '--seed': 'seed', '--threads': 'threads', '--eval-every': 'evalEvery', '--out': 'out',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quiet') { o.quiet = true; continue; }
    if (a === '--help' || a === '-h') { usage(0); }
    const key = names[a];
    if (!key || i + 1 >= argv.length) { console.error(`error: unknown option or missing value: ${a}`); usage(1); }
    const v = argv[++i];
    o[key] = typeof o[key] === 'number' ? Number(v) : v;
    if (typeof o[key] === 'number' && !Number.isFinite(o[key])) { console.error(`error: ${a} needs a number, not '${v}'`); process.exit(1); }
  }
  if (!o.artifacts) { console.error('error: --artifacts DIR is required (a folder written by ortfinetune compile)'); usage(1); }
  return o;
}

function usage(code) {
  console.error('usage: node train.js --artifacts DIR [--steps 20] [--accumulation 2] [--lr 0.01] [--schedule cosine|linear|constant] ' +
    '[--warmup 0] [--min-lr 0] [--train-samples 256] [--eval-samples 64] [--batch-size 8] [--seed 1] [--threads 1] [--eval-every 0] [--out result.json] [--quiet]');
  process.exit(code);
}

// ---------------------------------------------------------------- dtypes
// ONNX dtype names (artifacts.json) -> onnxruntime-node tensor types and the typed arrays that hold them.
const DTYPES = {
  float: { ort: 'float32', Array: Float32Array },
  double: { ort: 'float64', Array: Float64Array },
  float16: { ort: 'float16', Array: Uint16Array },
  int64: { ort: 'int64', Array: BigInt64Array },
  bool: { ort: 'bool', Array: Uint8Array },
};
function dtype(name) {
  const t = DTYPES[name];
  if (!t) throw new Error(`dtype '${name}' is not supported by this sample`);
  return t;
}

// ---------------------------------------------------------------- deterministic data
// xorshift32; uniform() has 24 random bits, so every value is exact in float32 (and in any language).
function rng(seed) {
  let s = (seed >>> 0) || 0x9e3779b9;
  const next = () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s; };
  return { next, uniform: () => (next() >>> 8) / 16777216 };
}

// Blobs: one random centre per class in [-1, 1]^features, samples = centre + noise (sum of three uniforms, std ~0.3).
function makeDataset(seed, features, classes, trainCount, evalCount) {
  const r = rng(seed);
  const f = Math.fround;
  const centres = Array.from({ length: classes }, () => Float32Array.from({ length: features }, () => f(r.uniform() * 2 - 1)));
  function split(n) {
    const x = new Float32Array(n * features), y = new BigInt64Array(n);
    for (let i = 0; i < n; i++) {
      const c = Math.min(classes - 1, Math.floor(r.uniform() * classes));
      y[i] = BigInt(c);
      for (let d = 0; d < features; d++) x[i * features + d] = f(centres[c][d] + f(0.6 * (r.uniform() + r.uniform() + r.uniform() - 1.5)));
    }
    return { x, y, n };
  }
  const train = split(trainCount), evalSet = split(evalCount);
  return { train, eval: evalSet, shuffle: r };
}

// Batches of one epoch after another, each epoch a Fisher-Yates shuffle; only full batches (static batch sizes).
function* batchOrder(n, batch, r) {
  const order = Array.from({ length: n }, (_, i) => i);
  for (;;) {
    for (let i = n - 1; i > 0; i--) { const j = r.next() % (i + 1); [order[i], order[j]] = [order[j], order[i]]; }
    for (let s = 0; s + batch <= n; s += batch) yield order.slice(s, s + batch);
  }
}

function gather(set, idx, features) {
  const x = new Float32Array(idx.length * features), y = new BigInt64Array(idx.length);
  idx.forEach((k, i) => { x.set(set.x.subarray(k * features, (k + 1) * features), i * features); y[i] = set.y[k]; });
  return { x, y };
}

// ---------------------------------------------------------------- learning-rate schedule
// As OrtFinetune's Schedules (torch's LinearLR warm-up, then the main schedule): the rate for update number step + 1.
function schedule(name, base, total, warmup, minLr) {
  const frac = (s) => Math.min(1, (s - warmup) / Math.max(1, total - warmup));
  const after = {
    constant: () => base,
    cosine: (s) => minLr + (base - minLr) * 0.5 * (1 + Math.cos(Math.PI * frac(s))),
    linear: (s) => base + (minLr - base) * frac(s),
  }[name];
  if (!after) throw new Error(`schedule '${name}' is not known (constant, cosine, linear)`);
  return (step) => (step < warmup ? base * (step + 1) / warmup : after(step));
}

// ---------------------------------------------------------------- the trainer
const scalar = (type, v) => new ort.Tensor(type, type === 'int64' ? BigInt64Array.of(BigInt(v)) : type === 'bool' ? Uint8Array.of(v ? 1 : 0) : Float32Array.of(v), []);

class NodeTrainer {
  static async load(dir, threads) {
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'artifacts.json'), 'utf8'));
    if (!manifest.models || !manifest.optimizer_model)
      throw new Error(`${dir}: artifacts.json has no 'models' or no optimizer model; recompile with a current ortfinetune compile`);
    // As OrtFinetune's trainer: every graph optimization except common-subexpression elimination (see Device.cs).
    const options = {
      graphOptimizationLevel: 'all', intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential',
      extra: { optimization: { disable_specified_optimizers: 'CommonSubexpressionElimination' } },
    };
    const open = (f) => ort.InferenceSession.create(path.join(dir, f), options);
    const [train, evalS, optim, init] = await Promise.all([
      open(manifest.models.training.file), open(manifest.models.eval.file), open(manifest.models.optimizer.file), open(manifest.initial_parameters)]);
    // initial_parameters.onnx has no inputs; its outputs are the initial parameter and buffer values.
    const initial = await init.run({});
    await init.release();
    return new NodeTrainer(manifest, train, evalS, optim, initial);
  }

  constructor(manifest, train, evalS, optim, initial) {
    Object.assign(this, { manifest, train, evalS, optim });
    this.step = 0; // updates applied so far; the optimizer's step input is this + 1
    this.lr = 0;
    this.resetPending = true;
    // Slots: what the optimizer updates as one tensor. Buckets: flat arrays shared by several parameters (each a
    // view at its offset; gaps stay zero). Per-parameter layout: one slot per parameter, offset 0.
    const params = new Map(manifest.parameters.map((p) => [p.name, p]));
    const slots = manifest.optimizer_layout === 'buckets'
      ? manifest.optimizer_buckets.map((b) => ({
        name: b.name, dtype: b.dtype, elements: b.elements, gradInput: b.gradients_input, stateInputs: b.state_inputs,
        members: b.members.map((m) => ({ name: m.parameter, offset: m.offset, elements: m.elements, shape: m.shape })),
      }))
      : manifest.parameters.map((p) => ({
        name: p.name, dtype: p.dtype, elements: p.elements, gradInput: p.gradient,
        stateInputs: Object.fromEntries(manifest.optimizer_state.map((s) => [s, `${p.name}.${s}`])),
        members: [{ name: p.name, offset: 0, elements: p.elements, shape: p.shape }],
      }));
    this.slots = slots.map((s) => {
      const A = dtype(s.dtype).Array;
      const slot = { ...s, param: new A(s.elements), grad: new A(s.elements), state: {} };
      for (const name of Object.keys(s.stateInputs)) slot.state[name] = new A(s.elements);
      for (const m of s.members) {
        const v = initial[m.name];
        if (!v || v.data.length !== m.elements) throw new Error(`initial_parameters.onnx has no value of ${m.elements} elements for '${m.name}'`);
        slot.param.set(v.data, m.offset);
      }
      return slot;
    });
    this.members = new Map();
    for (const s of this.slots) for (const m of s.members) this.members.set(m.name, { slot: s, ...m, dtype: params.get(m.name).dtype });
    if (this.members.size !== manifest.parameters.length) throw new Error('the optimizer layout does not cover every parameter; recompile the artifacts');
    this.buffers = new Map(manifest.buffers.map((b) => [b.name, initial[b.name]]));
    this.forwardInputs = manifest.models.training.inputs.filter((i) => i.role === 'input').map((i) => i.name);
    this.accumulationInGraph = manifest.models.training.inputs.some((i) => i.name === 'lazy_reset_grad');
    this.lossScale = manifest.models.training.inputs.some((i) => i.name === 'loss_scale') ? 1 : null;
  }

  // A parameter's current value (or its gradient) as a tensor over its slot's memory: no copy on the JS side.
  view(name, which) {
    const m = this.members.get(name);
    return new ort.Tensor(dtype(m.dtype).ort, m.slot[which].subarray(m.offset, m.offset + m.elements), m.shape);
  }

  feeds(model, inputs, labels) {
    const f = {};
    for (const i of this.manifest.models[model].inputs) {
      switch (i.role) {
        case 'input': f[i.name] = inputs[this.forwardInputs.indexOf(i.name)]; break;
        case 'labels': f[i.name] = labels; break;
        case 'parameter': f[i.name] = this.view(i.name, 'param'); break;
        case 'buffer': f[i.name] = this.buffers.get(i.name); break;
        case 'accumulation_buffer': f[i.name] = this.view(i.name.slice(0, -'_grad.accumulation.buffer'.length), 'grad'); break;
        case 'step_scalar':
          // Fed afresh on every run: session.run copies its feeds (with IOBinding on a GPU, re-bind them each step).
          if (i.name === 'lazy_reset_grad') f[i.name] = scalar('bool', this.resetPending);
          else if (i.name === 'loss_scale') f[i.name] = scalar('float32', this.lossScale);
          else throw new Error(`unexpected step input '${i.name}' in the ${model} model`);
          break;
        default: throw new Error(`input '${i.name}' of the ${model} model has role '${i.role}', which this sample does not know`);
      }
    }
    return f;
  }

  lazyResetGrad() { this.resetPending = true; }
  setLearningRate(lr) { this.lr = lr; }

  // Forward + backward on one batch; the gradients are added to the accumulated ones (or replace them after lazyResetGrad).
  async trainStep(inputs, labels) {
    const outs = this.manifest.models.training.outputs;
    const fetch = outs.filter((o) => o.role !== 'output').map((o) => o.name); // everything but the logits
    const r = await this.train.run(this.feeds('training', inputs, labels), fetch);
    for (const o of outs) {
      if (o.role === 'gradient') {
        const name = o.name.slice(0, -'_grad'.length);
        const m = this.members.get(name);
        if (this.accumulationInGraph || this.resetPending) m.slot.grad.set(r[o.name].data, m.offset); // the graph did reset ? g : buffer + g
        else { const g = r[o.name].data, acc = m.slot.grad; for (let k = 0; k < m.elements; k++) acc[m.offset + k] += g[k]; }
      } else if (o.role === 'buffer_updated') this.buffers.set(o.name.slice(0, -'_updated'.length), r[o.name]);
    }
    this.resetPending = false;
    return { loss: r.loss.data[0], top1: r.top1_correct ? Number(r.top1_correct.data[0]) : -1 };
  }

  // One update of every parameter and its state from the accumulated gradients.
  async optimizerStep() {
    const f = {
      learning_rate: scalar('float32', this.lr),
      step: scalar('int64', this.step + 1),
      grad_scale: scalar('float32', this.lossScale ?? 1),
    };
    const shape = (s) => [s.elements];
    const t = (s, a) => new ort.Tensor(dtype(s.dtype).ort, a, this.manifest.optimizer_layout === 'buckets' ? shape(s) : s.members[0].shape);
    for (const s of this.slots) {
      f[s.name] = t(s, s.param);
      f[s.gradInput] = t(s, s.grad);
      for (const [k, input] of Object.entries(s.stateInputs)) f[input] = t(s, s.state[k]);
    }
    const r = await this.optim.run(f);
    const allFinite = r.all_finite.data[0] !== 0;
    if (allFinite) {
      // The outputs are the new values: adopt their arrays (ORT wrote them; nothing to copy).
      for (const s of this.slots) {
        s.param = r[`${s.name}.updated`].data;
        for (const [k, input] of Object.entries(s.stateInputs)) s.state[k] = r[`${input}.updated`].data;
      }
      this.step++;
    }
    return { allFinite, gradNorm: r.grad_norm.data[0] };
  }

  async evalStep(inputs, labels) {
    const r = await this.evalS.run(this.feeds('eval', inputs, labels), ['loss', ...(this.manifest.models.eval.outputs.some((o) => o.name === 'top1_correct') ? ['top1_correct'] : [])]);
    return { loss: r.loss.data[0], top1: r.top1_correct ? Number(r.top1_correct.data[0]) : -1 };
  }
}

// ---------------------------------------------------------------- main
async function main() {
  const o = parseArgs(process.argv.slice(2));
  const log = o.quiet ? () => {} : console.log;
  const trainer = await NodeTrainer.load(o.artifacts, o.threads);
  const m = trainer.manifest;
  if (trainer.forwardInputs.length !== 1) throw new Error(`this sample feeds one forward input; the model has ${trainer.forwardInputs.length}`);
  const inputInfo = m.models.training.inputs.find((i) => i.role === 'input');
  if (inputInfo.dtype !== 'float') throw new Error(`the forward input '${inputInfo.name}' is ${inputInfo.dtype}; this sample makes float data`);
  const dims = inputInfo.shape.map(Number);
  const batch = Number.isInteger(dims[0]) ? dims[0] : o.batchSize;
  const featureDims = dims.slice(1);
  if (featureDims.some((d) => !Number.isInteger(d))) throw new Error(`the forward input's shape ${JSON.stringify(inputInfo.shape)} has symbolic feature dimensions`);
  const features = featureDims.reduce((a, b) => a * b, 1);
  const logits = m.models.eval.outputs.find((x) => x.role === 'output');
  const classes = Number(logits.shape[1]);
  if (!Number.isInteger(classes)) throw new Error(`the logits' class dimension is not static (${logits.shape[1]})`);

  const data = makeDataset(o.seed, features, classes, o.trainSamples, o.evalSamples);
  const order = batchOrder(data.train.n, batch, data.shuffle);
  const lrAt = schedule(o.schedule, o.lr, o.steps, o.warmup, o.minLr);
  const tensors = (b) => [[new ort.Tensor('float32', b.x, [b.y.length, ...featureDims])], new ort.Tensor('int64', b.y, [b.y.length])];
  log(`artifacts ${o.artifacts}: ${m.parameters.length} parameters, optimizer ${m.optimizer} (${m.optimizer_layout}${m.optimizer_layout === 'buckets' ? `, ${m.optimizer_buckets.length} buckets` : ''}), ` +
    `batch ${batch} x ${o.accumulation} micro-batches, ${o.steps} steps, onnxruntime-node ${ort.env.versions.node}`);

  async function evaluate() {
    let lossSum = 0, correct = 0, n = 0;
    const losses = [];
    for (let s = 0; s + batch <= data.eval.n; s += batch) {
      const b = gather(data.eval, Array.from({ length: batch }, (_, i) => s + i), features);
      const [x, y] = tensors(b);
      const r = await trainer.evalStep(x, y);
      losses.push(r.loss); lossSum += r.loss * batch; correct += Math.max(0, r.top1); n += batch;
    }
    return { step: trainer.step, loss: lossSum / n, accuracy: correct / n, batch_losses: losses };
  }

  const result = { onnxruntime_node: ort.env.versions.node, options: o, batch, features, classes, batches: [], steps: [], eval: [] };
  for (let step = 0; step < o.steps; step++) {
    trainer.lazyResetGrad();
    const losses = [];
    for (let k = 0; k < o.accumulation; k++) {
      const idx = order.next().value;
      result.batches.push(idx);
      const [x, y] = tensors(gather(data.train, idx, features));
      losses.push((await trainer.trainStep(x, y)).loss);
    }
    const lr = Math.fround(lrAt(trainer.step));
    trainer.setLearningRate(lr);
    const u = await trainer.optimizerStep();
    if (!u.allFinite) throw new Error(`a gradient became infinite or NaN at step ${step + 1}; stopping`);
    result.steps.push({ step: trainer.step, lr, losses, grad_norm: u.gradNorm });
    log(`step ${trainer.step}/${o.steps}  lr ${lr.toExponential(3)}  loss ${losses.map((l) => l.toFixed(5)).join(' ')}  grad_norm ${u.gradNorm.toFixed(4)}`);
    if (o.evalEvery > 0 && trainer.step % o.evalEvery === 0 && trainer.step < o.steps) {
      const e = await evaluate(); result.eval.push(e);
      log(`eval after step ${e.step}: loss ${e.loss.toFixed(5)}, accuracy ${(100 * e.accuracy).toFixed(2)}%`);
    }
  }
  const e = await evaluate(); result.eval.push(e);
  log(`eval after step ${e.step}: loss ${e.loss.toFixed(5)}, accuracy ${(100 * e.accuracy).toFixed(2)}%`);
  if (o.out) {
    result.data = { train_x: Array.from(data.train.x), train_y: Array.from(data.train.y, Number), eval_x: Array.from(data.eval.x), eval_y: Array.from(data.eval.y, Number), feature_shape: featureDims };
    fs.writeFileSync(o.out, JSON.stringify(result));
  }
}

main().catch((e) => { console.error(`error: ${e && e.message ? e.message : e}`); process.exit(1); });
