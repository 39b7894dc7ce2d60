/**
 * The engine's thread: it owns the model, the KV cache and the adapters, and runs scheduling steps
 * while there is work, so the HTTP thread never computes and stays responsive.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { getBackend, nativeBackend, setBackend } from '../backend/index.js';
import { loadModel, loadTokenizer } from '../models/load.js';
import { applyChatTemplate } from '../io/chat-template.js';
import { Engine, type ServedModel } from './engine.js';
import { RequestError } from './adapter-store.js';
import type { FromWorker, ToWorker, WorkerInit } from './protocol.js';

const init = workerData as WorkerInit;
const post = (m: FromWorker) => parentPort!.postMessage(m);

let engine: Engine;
let tok: ReturnType<typeof loadTokenizer>;
try {
  if (init.backend) setBackend(init.backend);
  else getBackend();
  if (init.threads) nativeBackend()?.setThreads(init.threads);
  const { model } = loadModel(init.model);
  tok = loadTokenizer(init.model, init.tokenizer, model.config.vocabSize);
  const ctx = Math.min(init.engine.contextLength, (model.config as { maxPositions?: number }).maxPositions ?? init.engine.contextLength);
  engine = new Engine(model as unknown as ServedModel, tok, { ...init.engine, contextLength: ctx });
  post({ type: 'ready', vocabSize: model.config.vocabSize, contextLength: ctx, adapters: engine.store.names() });
} catch (e) {
  post({ type: 'fatal', message: (e as Error).message });
  process.exit(1);
}

let scheduled = false;
function schedule(): void {
  if (scheduled) return;
  scheduled = true;
  setImmediate(run);
}

function run(): void {
  scheduled = false;
  if (engine.idle) return;
  engine.step();
  // yield to the message queue between steps so new requests join the running batch
  schedule();
}

function status(e: unknown): number {
  return e instanceof RequestError ? e.status : 500;
}

parentPort!.on('message', (m: ToWorker) => {
  switch (m.type) {
    case 'submit':
      try {
        engine.submit(
          m.req,
          (ev) => post({ type: 'token', ...ev }),
          (ev) => post({ type: 'done', ...ev }),
          (err) => post({ type: 'error', id: m.req.id, status: status(err), message: err.message }),
        );
        schedule();
      } catch (e) {
        post({ type: 'error', id: m.req.id, status: status(e), message: (e as Error).message });
      }
      return;
    case 'load':
    case 'unload':
    case 'list':
    case 'metrics':
    case 'encode':
      try {
        let value: unknown;
        if (m.type === 'load') engine.store.register(m.name, m.path);
        else if (m.type === 'unload') engine.store.unregister(m.name);
        else if (m.type === 'list') value = engine.store.names();
        else if (m.type === 'metrics') value = engine.metrics();
        else {
          let text = m.text;
          if (m.chat) {
            const tpl = (tok as { chatTemplate?: string | null }).chatTemplate;
            text = tpl ? applyChatTemplate(tpl, m.chat, { addGenerationPrompt: true }) : `${m.chat.map((x) => `${x.role}: ${x.content}`).join('\n')}\nassistant:`;
          }
          value = tok.encode(text, { bos: true });
        }
        post({ type: 'reply', call: m.call, ok: true, value });
      } catch (e) {
        post({ type: 'reply', call: m.call, ok: false, status: status(e), message: (e as Error).message });
      }
  }
});
