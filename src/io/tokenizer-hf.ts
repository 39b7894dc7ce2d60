/**
 * Hugging Face `tokenizer.json` tokenizers (byte-level BPE, SentencePiece-style BPE with byte
 * fallback, WordPiece, Unigram) through @huggingface/tokenizers, with `tokenizer_config.json`
 * for special tokens and the chat template. Files are checked field by field before the library
 * sees them (tokenizer-check.ts), so a broken file is an error that names the file and the field.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfTokenizerImpl } from '@huggingface/tokenizers';
import { AdaptkitError } from '../tensor/index.js';
import { readJsonFile } from './json.js';
import { checkTokenizerJson } from './tokenizer-check.js';

function tokenName(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

/** Errors the library raises despite the checks: still named after the file, with the cause kept. */
function libraryError(source: string, what: string, e: unknown): AdaptkitError {
  return new AdaptkitError(`${source}: ${what}: ${(e as Error)?.message ?? String(e)}`, { cause: e });
}

export class HfTokenizer {
  private impl: HfTokenizerImpl;
  readonly bosId: number | null;
  readonly eosId: number | null;
  readonly padId: number | null;
  readonly chatTemplate: string | null;
  readonly vocabSize: number;
  readonly json: Record<string, unknown>;
  readonly config: Record<string, unknown>;

  /**
   * @param source names the tokenizer in errors (its tokenizer.json path, or the file it was converted from)
   * @param configSource names tokenizer_config.json in errors
   */
  constructor(json: unknown, config: unknown, readonly source = 'tokenizer.json', configSource = 'tokenizer_config.json') {
    const checked = checkTokenizerJson(json, config, source, configSource);
    this.json = checked.tokenizer;
    this.config = checked.config;
    try {
      this.impl = new HfTokenizerImpl(this.json, this.config);
    } catch (e) {
      throw libraryError(source, 'the tokenizer library rejected it', e);
    }
    const id = (key: string) => {
      const name = tokenName(this.config[key]);
      return name === null ? null : (this.impl.token_to_id(name) ?? null);
    };
    this.bosId = id('bos_token');
    this.eosId = id('eos_token');
    this.padId = id('pad_token');
    const tpl = this.config.chat_template;
    this.chatTemplate = typeof tpl === 'string' ? tpl : null;
    this.vocabSize = checked.vocabSize;
  }

  static fromDir(dir: string): HfTokenizer {
    const tj = join(dir, 'tokenizer.json');
    if (!existsSync(tj)) throw new AdaptkitError(`${dir}: no tokenizer.json`);
    const cfgPath = join(dir, 'tokenizer_config.json');
    return new HfTokenizer(readJsonFile(tj), existsSync(cfgPath) ? readJsonFile(cfgPath) : {}, tj, cfgPath);
  }

  /** Token ids; `bos` adds the tokenizer's own special tokens (its post-processor), the default. */
  encode(text: string, opts: { bos?: boolean; eos?: boolean } = {}): number[] {
    let ids: number[];
    try {
      ids = this.impl.encode(text, { add_special_tokens: opts.bos ?? true }).ids;
    } catch (e) {
      throw libraryError(this.source, 'encoding failed', e);
    }
    if (opts.eos && this.eosId !== null && ids[ids.length - 1] !== this.eosId) ids.push(this.eosId);
    return ids;
  }

  /** Text of the ids; ids without a token (beyond a padded vocabulary) are skipped, as HF tokenizers do. */
  decode(ids: readonly number[], opts: { skipSpecial?: boolean } = {}): string {
    const known: number[] = [];
    for (const id of ids) {
      if (!Number.isInteger(id)) throw new AdaptkitError(`${this.source}: cannot decode ${String(id)}: token ids are integers`);
      if (this.impl.id_to_token(id) !== undefined) known.push(id);
    }
    if (known.length === 0) return '';
    try {
      return this.impl.decode(known, { skip_special_tokens: opts.skipSpecial ?? true });
    } catch (e) {
      throw libraryError(this.source, 'decoding failed', e);
    }
  }

  tokenToId(token: string): number | undefined {
    return this.impl.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.impl.id_to_token(id);
  }
}
