/** Messages between the HTTP thread and the engine's worker thread. */
import type { DoneEvent, EngineMetrics, EngineOptions, GenerationRequest, TokenEvent } from './engine.js';

export interface WorkerInit {
  model: string;
  tokenizer?: string;
  backend?: 'js' | 'native';
  threads?: number;
  engine: EngineOptions;
}

export type ToWorker =
  | { type: 'submit'; req: GenerationRequest }
  | { type: 'load'; call: number; name: string; path: string }
  | { type: 'unload'; call: number; name: string }
  | { type: 'list'; call: number }
  | { type: 'metrics'; call: number }
  | { type: 'encode'; call: number; text: string; chat?: { role: string; content: string }[] };

export type FromWorker =
  | { type: 'ready'; vocabSize: number; contextLength: number; adapters: string[] }
  | { type: 'fatal'; message: string }
  | ({ type: 'token' } & TokenEvent)
  | ({ type: 'done' } & DoneEvent)
  | { type: 'error'; id: string; status: number; message: string }
  | { type: 'reply'; call: number; ok: boolean; status?: number; message?: string; value?: unknown };

export type { EngineMetrics };
