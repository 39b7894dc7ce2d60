/** The HTTP thread's side of the engine and tokenizer worker threads: numbered calls, streamed events. */
import { Worker } from 'node:worker_threads';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { DoneEvent, GenerationRequest, TokenEvent } from './engine.js';
import type { ChatMessage, FromWorker, ReadyInfo, ToTokenizer, ToWorker, WorkerInit } from './protocol.js';
import { CLIENT_GONE, HttpError } from './http-errors.js';

export interface Handlers {
  onToken: (e: TokenEvent) => void;
  onDone: (e: DoneEvent) => void;
  onError: (status: number, message: string) => void;
}

type Reply = Extract<FromWorker, { type: 'reply' }>;

/** A worker thread answering numbered calls; subclasses take the other messages. */
export class WorkerClient {
  protected worker: Worker;
  private calls = new Map<number, (m: Reply) => void>();
  private nextCall = 1;
  private stopped: string | null = null;
  private outbox: (ToWorker | ToTokenizer)[] = [];
  ready: Promise<ReadyInfo>;

  constructor(init: WorkerInit) {
    const self = fileURLToPath(import.meta.url);
    const file = self.replace(/worker-clients\.(ts|js)$/, 'worker.$1');
    // from compiled code the worker is a plain module; from TypeScript sources (tests, development)
    // it is loaded through tsx, registered inside the worker
    this.worker = file.endsWith('.ts')
      ? new Worker(`import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(pathToFileURL(file).href)}); });`, { eval: true, workerData: init })
      : new Worker(file, { workerData: init });
    this.ready = new Promise((resolve, reject) => {
      this.worker.on('error', (e) => {
        this.stopped = e.message;
        reject(e);
      });
      this.worker.on('message', (batch: FromWorker[]) => {
        for (const m of batch) {
          if (m.type === 'ready') resolve(m);
          else if (m.type === 'fatal') reject(new Error(m.message));
          else if (m.type === 'reply') {
            this.calls.get(m.call)?.(m);
            this.calls.delete(m.call);
          } else this.onEvent(m);
        }
      });
    });
    // a thread that died must not leave callers waiting forever
    this.worker.on('exit', () => {
      this.stopped ??= 'the worker thread stopped';
      for (const answer of this.calls.values()) answer({ type: 'reply', call: 0, ok: false, status: 503, message: 'the server is not running' });
      this.calls.clear();
      this.onExit();
    });
  }

  protected onEvent(_m: FromWorker): void {}

  protected onExit(): void {}

  /** Queue a message; what this event-loop turn queued goes out together once its I/O is done. */
  protected post(msg: ToWorker | ToTokenizer): void {
    if (this.outbox.length === 0) setImmediate(() => this.flush());
    this.outbox.push(msg);
  }

  private flush(): void {
    const batch = this.outbox;
    this.outbox = [];
    if (batch.length > 0 && !this.stopped) this.worker.postMessage(batch);
  }

  /** Calls sent and not yet answered. */
  get pending(): number {
    return this.calls.size;
  }

  async call<T>(msg: Record<string, unknown> & { type: string }): Promise<T> {
    if (this.stopped) throw new HttpError(503, 'the server is not running', 'server_error');
    const call = this.nextCall++;
    const reply = await new Promise<Reply>((resolve) => {
      this.calls.set(call, resolve);
      this.post({ ...msg, call } as ToWorker);
    });
    if (!reply.ok) throw new HttpError(reply.status ?? 500, reply.message ?? 'error', (reply.status ?? 500) >= 500 ? 'server_error' : 'invalid_request_error');
    return reply.value as T;
  }

  terminate(): Promise<number> {
    return this.worker.terminate();
  }
}

/** The engine thread: submissions with streamed events, cancellations, and calls with replies. */
export class EngineClient extends WorkerClient {
  private streams = new Map<string, Handlers>();

  protected override onEvent(m: FromWorker): void {
    if (m.type !== 'token' && m.type !== 'done' && m.type !== 'error') return;
    const h = this.streams.get(m.id);
    if (!h) return;
    if (m.type === 'token') h.onToken(m);
    else if (m.type === 'done') {
      this.streams.delete(m.id);
      h.onDone(m);
    } else {
      this.streams.delete(m.id);
      h.onError(m.status, m.message);
    }
  }

  protected override onExit(): void {
    for (const h of this.streams.values()) h.onError(503, 'the engine stopped');
    this.streams.clear();
  }

  submit(req: GenerationRequest, stream: boolean, h: Handlers): void {
    this.streams.set(req.id, h);
    this.post({ type: 'submit', req, stream });
  }

  /** The client left: stop generating for it and free its cache now, not after max_tokens. */
  cancel(id: string): void {
    const h = this.streams.get(id);
    if (!h) return;
    this.streams.delete(id);
    this.post({ type: 'cancel', id });
    h.onError(CLIENT_GONE, 'the client closed the connection');
  }

  get inFlight(): number {
    return this.streams.size;
  }
}

export class TokenizerClient extends WorkerClient {
  encode(text: string, chat?: ChatMessage[]): Promise<number[]> {
    return this.call<number[]>({ type: 'encode', text, chat });
  }
}
