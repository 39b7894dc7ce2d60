/**
 * The server's worker threads, one file for both roles so each loads the model's tokenizer the same
 * way. The engine thread owns the model, the KV cache and the adapters and runs scheduling steps
 * while there is work; the tokenizer thread renders chat templates and encodes prompts, so a long
 * prompt delays neither the running batch nor the HTTP thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { getBackend, nativeBackend, setBackend } from '../backend/index.js';
import { loadModel, loadTokenizer } from '../models/load.js';
import { describeQuantization } from '../models/quantize.js';
import { applyChatTemplate } from '../io/chat-template.js';
import { bufferPool } from '../tensor/index.js';
import { type Module, isLinearLayer } from '../nn/index.js';
import { Engine, type ServedModel } from './engine.js';
import { RequestError } from './adapter-store.js';
import type { FromWorker, ToTokenizer, ToWorker, WorkerInit } from './protocol.js';
import { loadPlugins } from '../io/plugins.js';

const init = workerData as WorkerInit;
// messages for the HTTP thread go out together (see protocol.ts): after each engine step and after
// each batch of requests
let outbox: FromWorker[] = [];
const post = (m: FromWorker) => outbox.push(m);
const flush = () => {
  if (outbox.length === 0) return;
  parentPort!.postMessage(outbox);
  outbox = [];
};

function status(e: unknown): number {
  return e instanceof RequestError ? e.status : 500;
}

/**
 * The biggest weights file a valid adapter can have: rank --max-rank on every linear layer, in the
 * widest dtype safetensors holds (8 bytes), plus a header allowance. Anything larger cannot be an
 * adapter this server would accept, so it is refused before it is read.
 */
function maxAdapterBytes(model: Module, maxRank: number): number {
  let elems = 0;
  for (const [, m] of model.namedModules()) if (isLinearLayer(m)) elems += maxRank * (m.inFeatures + m.outFeatures);
  return elems * 8 + (1 << 20) + 8;
}

async function runEngine(init: Extract<WorkerInit, { role: 'engine' }>): Promise<void> {
  let engine: Engine;
  try {
    await loadPlugins(init.plugins ?? []);
    if (init.backend) setBackend(init.backend);
    else getBackend();
    if (init.threads) nativeBackend()?.setThreads(init.threads);
    bufferPool.setLimit(init.poolBytes);
    const { model, quantized } = loadModel(init.model, { quantize: init.quantize });
    if (quantized) process.stderr.write(`adaptkit: ${describeQuantization(quantized)}\n`);
    const tok = loadTokenizer(init.model, init.tokenizer, model.config.vocabSize);
    const ctx = Math.min(init.engine.contextLength, (model.config as { maxPositions?: number }).maxPositions ?? init.engine.contextLength);
    const cap = maxAdapterBytes(model as unknown as Module, init.engine.maxRank);
    engine = new Engine(model as unknown as ServedModel, tok, { ...init.engine, contextLength: ctx });
    post({ type: 'ready', vocabSize: model.config.vocabSize, contextLength: ctx, adapters: engine.store.names(), maxAdapterBytes: cap });
    flush();
  } catch (e) {
    post({ type: 'fatal', message: (e as Error).message });
    flush();
    process.exit(1);
  }

  let scheduled = false;
  const schedule = (): void => {
    if (scheduled) return;
    scheduled = true;
    setImmediate(run);
  };
  const run = (): void => {
    scheduled = false;
    if (engine.idle) return;
    engine.step();
    flush();
    // yield to the message queue between steps so new requests join the running batch and
    // cancellations free their blocks before the next step
    schedule();
  };

  const handle = (m: ToWorker): void => {
    switch (m.type) {
      case 'submit':
        try {
          engine.submit(
            m.req,
            m.stream ? (ev) => post({ type: 'token', ...ev }) : () => {},
            // a stream has had every token's log-probabilities with its text already
            (ev) => post(m.stream ? { type: 'done', ...ev, logprobs: undefined } : { type: 'done', ...ev }),
            (err) => post({ type: 'error', id: m.req.id, status: status(err), message: err.message }),
          );
          schedule();
        } catch (e) {
          post({ type: 'error', id: m.req.id, status: status(e), message: (e as Error).message });
        }
        return;
      case 'cancel':
        engine.cancel(m.id);
        return;
      case 'load':
      case 'unload':
      case 'list':
      case 'metrics':
        try {
          let value: unknown;
          if (m.type === 'load') engine.store.register(m.name, m.path);
          else if (m.type === 'unload') engine.store.unregister(m.name);
          else if (m.type === 'list') value = engine.store.names();
          else value = engine.metrics();
          post({ type: 'reply', call: m.call, ok: true, value });
        } catch (e) {
          post({ type: 'reply', call: m.call, ok: false, status: status(e), message: (e as Error).message });
        }
    }
  };
  parentPort!.on('message', (batch: ToWorker[]) => {
    for (const m of batch) handle(m);
    flush();
  });
}

function runTokenizer(init: Extract<WorkerInit, { role: 'tokenizer' }>): void {
  let tok: ReturnType<typeof loadTokenizer>;
  try {
    tok = loadTokenizer(init.model, init.tokenizer, init.vocabSize);
    post({ type: 'ready', vocabSize: init.vocabSize, contextLength: 0, adapters: [], maxAdapterBytes: 0 });
    flush();
  } catch (e) {
    post({ type: 'fatal', message: (e as Error).message });
    flush();
    process.exit(1);
  }
  const template = (tok as { chatTemplate?: string | null }).chatTemplate;
  parentPort!.on('message', (batch: ToTokenizer[]) => {
    let since = performance.now();
    for (const m of batch) {
      try {
        let text = m.text;
        if (m.chat) text = template ? applyChatTemplate(template, m.chat, { addGenerationPrompt: true }) : `${m.chat.map((x) => `${x.role}: ${x.content}`).join('\n')}\nassistant:`;
        post({ type: 'reply', call: m.call, ok: true, value: tok.encode(text, { bos: true }) });
      } catch (e) {
        post({ type: 'reply', call: m.call, ok: false, status: status(e), message: (e as Error).message });
      }
      // short prompts answer together; behind a long one, the ones done go out first
      if (performance.now() - since > 5) {
        flush();
        since = performance.now();
      }
    }
    flush();
  });
}

if (init.role === 'tokenizer') runTokenizer(init);
else void runEngine(init);
