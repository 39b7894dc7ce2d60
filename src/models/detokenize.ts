import type { Tokenizer } from './tokenizer.js';

/**
 * Turns generated tokens into text one token at a time, in constant work per token: each step decodes
 * only a short window (a few tokens before the last emitted text, and the new ones), not the whole
 * sequence. The window starts inside the prompt, so the first generated token reads as it does after
 * the prompt (its leading space kept). Text that ends in an incomplete character is held back until
 * the character completes, or until `flush()`.
 */
export class TextStream {
  /** The decode window: ids[0, readOff) is already emitted context, the rest is new. */
  private ids: number[];
  private readOff: number;
  /** All text emitted so far. */
  text = '';

  constructor(private readonly tokenizer: Pick<Tokenizer, 'decode'>, promptIds: readonly number[], context = 6) {
    this.ids = promptIds.slice(Math.max(0, promptIds.length - context));
    this.readOff = this.ids.length;
  }

  /** Adds one generated token; returns the text it completes ('' while a character is incomplete). */
  push(id: number): string {
    this.ids.push(id);
    return this.advance(false);
  }

  /** At the end of generation: whatever was held back (an incomplete character decodes as U+FFFD). */
  flush(): string {
    return this.advance(true);
  }

  private advance(final: boolean): string {
    if (this.readOff >= this.ids.length) return '';
    const before = this.tokenizer.decode(this.ids.slice(0, this.readOff));
    const after = this.tokenizer.decode(this.ids);
    if (after.length <= before.length || (!final && after.endsWith('\uFFFD'))) return '';
    const delta = after.slice(before.length);
    this.text += delta;
    // the next window starts at the tokens just emitted
    this.ids = this.ids.slice(this.readOff);
    this.readOff = this.ids.length;
    return delta;
  }
}
