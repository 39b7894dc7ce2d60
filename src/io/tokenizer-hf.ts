/**
 * Hugging Face `tokenizer.json` tokenizers (byte-level BPE, SentencePiece-style BPE with byte
 * fallback, WordPiece, Unigram) through @huggingface/tokenizers, with `tokenizer_config.json`
 * for special tokens and the chat template.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfTokenizerImpl } from '@huggingface/tokenizers';
import { AdaptkitError } from '../tensor/index.js';

function readJson(path: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new AdaptkitError(`${path}: not valid JSON (${(e as Error).message})`);
  }
}

function tokenName(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

export class HfTokenizer {
  private impl: HfTokenizerImpl;
  readonly bosId: number | null;
  readonly eosId: number | null;
  readonly padId: number | null;
  readonly chatTemplate: string | null;
  readonly vocabSize: number;

  constructor(readonly json: Record<string, unknown>, readonly config: Record<string, unknown>) {
    this.impl = new HfTokenizerImpl(json, config);
    const id = (key: string) => {
      const name = tokenName(config[key]);
      return name === null ? null : (this.impl.token_to_id(name) ?? null);
    };
    this.bosId = id('bos_token');
    this.eosId = id('eos_token');
    this.padId = id('pad_token');
    const tpl = config.chat_template;
    this.chatTemplate = typeof tpl === 'string' ? tpl : null;
    const model = json.model as { vocab?: Record<string, number> | unknown[] } | undefined;
    const base = Array.isArray(model?.vocab) ? model.vocab.length : Object.keys(model?.vocab ?? {}).length;
    const added = ((json.added_tokens as { id: number }[] | undefined) ?? []).reduce((m, t) => Math.max(m, t.id + 1), 0);
    this.vocabSize = Math.max(base, added);
  }

  static fromDir(dir: string): HfTokenizer {
    const tj = join(dir, 'tokenizer.json');
    if (!existsSync(tj)) throw new AdaptkitError(`${dir}: no tokenizer.json`);
    const cfgPath = join(dir, 'tokenizer_config.json');
    return new HfTokenizer(readJson(tj), existsSync(cfgPath) ? readJson(cfgPath) : {});
  }

  /** Token ids; `bos` adds the tokenizer's own special tokens (its post-processor), the default. */
  encode(text: string, opts: { bos?: boolean; eos?: boolean } = {}): number[] {
    const ids = this.impl.encode(text, { add_special_tokens: opts.bos ?? true }).ids;
    if (opts.eos && this.eosId !== null && ids[ids.length - 1] !== this.eosId) ids.push(this.eosId);
    return ids;
  }

  decode(ids: readonly number[], opts: { skipSpecial?: boolean } = {}): string {
    if (ids.length === 0) return '';
    return this.impl.decode([...ids], { skip_special_tokens: opts.skipSpecial ?? true });
  }

  tokenToId(token: string): number | undefined {
    return this.impl.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.impl.id_to_token(id);
  }
}
