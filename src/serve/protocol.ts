/**
 * Messages between the HTTP thread and its two worker threads, the engine and the tokenizer. Every
 * postMessage carries a list of them: what one HTTP event-loop turn asks, what one engine step
 * produced. Each message wakes the other thread, and on busy cores a wake-up can cost the sender
 * its core, so a burst of 200 requests or a 32-row decode step is one message, not hundreds.
 */
import type { DoneEvent, EngineMetrics, EngineOptions, GenerationRequest, TokenEvent } from './engine.js';

export interface ChatMessage {
  role: string;
  content: string;
}

export type WorkerInit =
  | {
    role: 'engine';
    model: string;
    tokenizer?: string;
    backend?: 'js' | 'native';
    threads?: number;
    /** Cap of the tensor buffer pool in bytes. */
    poolBytes: number;
    engine: EngineOptions;
    /** Modules that register adapter methods or model families, imported before the model loads. */
    plugins?: string[];
    /** Quantize the base model's linear layers into this format as it loads. */
    quantize?: string;
  }
  | { role: 'tokenizer'; model: string; tokenizer?: string; vocabSize: number };

export type ToWorker =
  /** Without `stream` only the end of the generation is reported, not each piece of text. */
  | { type: 'submit'; req: GenerationRequest; stream: boolean }
  | { type: 'cancel'; id: string }
  | { type: 'load'; call: number; name: string; path: string }
  | { type: 'unload'; call: number; name: string }
  | { type: 'list'; call: number }
  | { type: 'metrics'; call: number };

export type ToTokenizer = { type: 'encode'; call: number; text: string; chat?: ChatMessage[] };

export interface ReadyInfo {
  vocabSize: number;
  contextLength: number;
  adapters: string[];
  /** The largest adapter_model.safetensors a LoRA of at most --max-rank on this model can need. */
  maxAdapterBytes: number;
}

export type GenerationEvent =
  | ({ type: 'token' } & TokenEvent)
  | ({ type: 'done' } & DoneEvent)
  | { type: 'error'; id: string; status: number; message: string };

export type FromWorker =
  | ({ type: 'ready' } & ReadyInfo)
  | { type: 'fatal'; message: string }
  | GenerationEvent
  | { type: 'reply'; call: number; ok: boolean; status?: number; message?: string; value?: unknown };

export type { EngineMetrics };
