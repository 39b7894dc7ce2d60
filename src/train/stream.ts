/**
 * Training data streamed from a JSONL file larger than memory: the file is read sequentially in
 * chunks of lines, each chunk shuffled by a seeded generator, and the file starts over at its end.
 * The position (epoch, byte offset and line of the chunk, index in it) is all that is needed to
 * continue exactly, so checkpoints stay small.
 */
import { AdaptkitError, Rng } from '../tensor/index.js';
import { type DataRecord, DataError, jsonRecord, readLines } from './data.js';
import type { Example } from './examples.js';

export interface StreamPosition {
  epoch: number;
  offset: number;
  line: number;
  index: number;
}

export class StreamingExamples {
  private chunk: Example[] = [];
  private pos: StreamPosition = { epoch: 0, offset: 0, line: 1, index: 0 };
  private nextOffset = 0;
  private nextLine = 1;
  skipped = 0;

  constructor(
    readonly path: string,
    readonly toExample: (r: DataRecord) => Example,
    readonly opts: { chunkLines?: number; seed?: number; skipBadLines?: boolean } = {},
  ) {}

  private load(): void {
    const size = this.opts.chunkLines ?? 4096;
    const out: Example[] = [];
    let end = this.pos.offset;
    let line = this.pos.line;
    for (const l of readLines(this.path, this.pos.offset, this.pos.line)) {
      end = l.end;
      line = l.no + 1;
      if (l.line.trim() === '') continue;
      let rec: DataRecord | string;
      try {
        rec = jsonRecord(JSON.parse(l.line));
      } catch (e) {
        rec = `not valid JSON (${(e as Error).message})`;
      }
      if (typeof rec === 'string') {
        if (!this.opts.skipBadLines) throw new DataError(`${this.path}:${l.no}: ${rec} (pass --skip-bad-lines to skip such lines)`);
        this.skipped++;
        continue;
      }
      out.push(this.toExample(rec));
      if (out.length >= size) break;
    }
    const rng = new Rng((this.opts.seed ?? 0) * 7919 + this.pos.epoch * 104729 + this.pos.offset);
    for (let i = out.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [out[i], out[j]] = [out[j]!, out[i]!];
    }
    this.chunk = out;
    this.nextOffset = end;
    this.nextLine = line;
  }

  /** The next `n` examples (crossing chunk and epoch boundaries). */
  next(n: number): Example[] {
    const out: Example[] = [];
    let emptyPasses = 0;
    while (out.length < n) {
      if (this.chunk.length === 0) this.load();
      if (this.pos.index >= this.chunk.length) {
        if (this.chunk.length === 0) {
          // end of file: start the next epoch from the top
          if (++emptyPasses > 1) throw new AdaptkitError(`${this.path}: no usable examples`);
          this.pos = { epoch: this.pos.epoch + 1, offset: 0, line: 1, index: 0 };
        } else {
          this.pos = { epoch: this.pos.epoch, offset: this.nextOffset, line: this.nextLine, index: 0 };
        }
        this.chunk = [];
        continue;
      }
      out.push(this.chunk[this.pos.index++]!);
    }
    return out;
  }

  position(): StreamPosition {
    return { ...this.pos };
  }

  seek(p: StreamPosition): void {
    this.pos = { ...p };
    this.chunk = [];
    const index = p.index;
    this.pos.index = 0;
    this.load();
    this.pos.index = index;
  }
}
