/**
 * Checks tokenizer.json and tokenizer_config.json against what @huggingface/tokenizers reads,
 * before the library sees them. The library trusts its input: a field of the wrong type becomes a
 * TypeError deep inside it, a FixedLength pre-tokenizer of length 0 loops forever, and nested
 * Sequences or merges overflow the stack. Every error here names the file and the field's path.
 *
 * The component list and field types follow the library (0.2.0) and the Rust `tokenizers` schema
 * it mirrors; missing optional fields get the Rust defaults where the library would misbehave.
 */
import * as tokenizersLib from '@huggingface/tokenizers';
import { AdaptkitError } from '../tensor/index.js';
import { type JsonObject, isObject, jsonPath, preview } from './json.js';

/** Sequences inside Sequences: real files use one level; the library recurses per level. */
const MAX_NESTING = 16;

// the library's own regex translation (Oniguruma to JS), reached through a component that uses it;
// the package's type declarations do not list the component classes its bundle exports
const SplitPreTokenizer = (tokenizersLib as unknown as { SplitPreTokenizer: new (config: object) => unknown }).SplitPreTokenizer;
/** Token ids index arrays in the library; larger ones would make sparse arrays and huge loops. */
export const MAX_TOKEN_ID = 1 << 24;

const BEHAVIORS = ['Removed', 'Isolated', 'MergedWithPrevious', 'MergedWithNext', 'Contiguous'];
const PREPEND_SCHEMES = ['always', 'first', 'never'];

const NORMALIZERS = ['BertNormalizer', 'Precompiled', 'Sequence', 'Replace', 'NFC', 'NFD', 'NFKC', 'NFKD', 'Strip', 'StripAccents', 'Lowercase', 'Prepend'];
const PRE_TOKENIZERS = ['BertPreTokenizer', 'Sequence', 'Whitespace', 'WhitespaceSplit', 'Metaspace', 'ByteLevel', 'Split', 'Punctuation', 'Digits', 'Replace', 'FixedLength'];
const POST_PROCESSORS = ['TemplateProcessing', 'ByteLevel', 'BertProcessing', 'RobertaProcessing', 'Sequence'];
const DECODERS = ['ByteLevel', 'WordPiece', 'Metaspace', 'BPEDecoder', 'CTC', 'Sequence', 'Replace', 'Fuse', 'Strip', 'ByteFallback'];
const MODELS = ['BPE', 'WordPiece', 'Unigram'];

class Checker {
  /** Token strings the model and added_tokens define, for fields that must name a real token. */
  known = new Set<string>();

  constructor(readonly source: string) {}

  fail(path: string, msg: string): never {
    throw new AdaptkitError(`${this.source}: ${path} ${msg}`);
  }

  object(v: unknown, path: string): JsonObject {
    if (!isObject(v)) this.fail(path, `must be an object, got ${preview(v)}`);
    return v;
  }

  array(v: unknown, path: string): unknown[] {
    if (!Array.isArray(v)) this.fail(path, `must be a list, got ${preview(v)}`);
    return v;
  }

  string(o: JsonObject, key: string, path: string, opts: { optional?: boolean; nullable?: boolean; nonEmpty?: boolean } = {}): string | null | undefined {
    const v = o[key];
    const p = jsonPath(path, key);
    if (v === undefined && opts.optional) return undefined;
    if (v === null && opts.nullable) return null;
    if (typeof v !== 'string') this.fail(p, `must be a string${opts.nullable ? ' or null' : ''}, got ${preview(v)}`);
    if (opts.nonEmpty && v.length === 0) this.fail(p, 'must not be empty');
    return v;
  }

  bool(o: JsonObject, key: string, path: string, nullable = false): void {
    const v = o[key];
    if (v === undefined || (nullable && v === null)) return;
    if (typeof v !== 'boolean') this.fail(jsonPath(path, key), `must be true or false${nullable ? ' or null' : ''}, got ${preview(v)}`);
  }

  int(o: JsonObject, key: string, path: string, min: number, max: number, optional = true): number | undefined {
    const v = o[key];
    if (v === undefined && optional) return undefined;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
      this.fail(jsonPath(path, key), `must be an integer from ${min} to ${max}, got ${preview(v)}`);
    }
    return v;
  }

  oneOf(o: JsonObject, key: string, path: string, allowed: readonly string[], optional = true): void {
    const v = o[key];
    if (v === undefined && optional) return;
    if (typeof v !== 'string' || !allowed.includes(v)) this.fail(jsonPath(path, key), `must be one of ${allowed.join(', ')}, got ${preview(v)}`);
  }

  type(o: JsonObject, path: string, allowed: readonly string[], what: string): string {
    const t = o.type;
    if (typeof t !== 'string' || !allowed.includes(t)) {
      this.fail(jsonPath(path, 'type'), `${preview(t)} is not a ${what} the tokenizer library runs (${allowed.join(', ')})`);
    }
    return t;
  }

  /** A {String} or {Regex} pattern; a regex must compile the way the library compiles it. */
  pattern(o: JsonObject, key: string, path: string): void {
    const p = jsonPath(path, key);
    const v = this.object(o[key], p);
    const keys = Object.keys(v);
    if (keys.length !== 1 || (keys[0] !== 'String' && keys[0] !== 'Regex')) this.fail(p, `must be {"String": ...} or {"Regex": ...}, got ${preview(v)}`);
    const s = this.string(v, keys[0]!, p)!;
    if (keys[0] === 'Regex') {
      try {
        new SplitPreTokenizer({ type: 'Split', pattern: { Regex: s }, behavior: 'Isolated', invert: false });
      } catch (e) {
        this.fail(jsonPath(p, 'Regex'), `is not a valid regular expression: ${(e as Error).message}`);
      }
    }
  }

  token(v: unknown, path: string): void {
    if (typeof v !== 'string') this.fail(path, `must be a token string, got ${preview(v)}`);
    if (!this.known.has(v)) this.fail(path, `names ${preview(v)}, which is neither in the vocabulary nor an added token`);
  }

  depth(path: string, depth: number): void {
    if (depth > MAX_NESTING) this.fail(path, `nests Sequences more than ${MAX_NESTING} deep`);
  }

  // -------------------------------------------------------------------------------------------

  normalizer(v: unknown, path: string, depth = 0): void {
    if (v === null) return;
    this.depth(path, depth);
    const o = this.object(v, path);
    switch (this.type(o, path, NORMALIZERS, 'normalizer')) {
      case 'BertNormalizer':
        for (const k of ['clean_text', 'handle_chinese_chars', 'lowercase']) this.bool(o, k, path);
        this.bool(o, 'strip_accents', path, true);
        break;
      case 'Precompiled':
        this.string(o, 'precompiled_charsmap', path, { optional: true, nullable: true });
        break;
      case 'Sequence':
        this.array(o.normalizers, jsonPath(path, 'normalizers')).forEach((x, i) => this.normalizer(x, jsonPath(jsonPath(path, 'normalizers'), i), depth + 1));
        break;
      case 'Replace':
        this.pattern(o, 'pattern', path);
        this.string(o, 'content', path);
        break;
      case 'Strip':
        this.bool(o, 'strip_left', path);
        this.bool(o, 'strip_right', path);
        break;
      case 'Prepend':
        this.string(o, 'prepend', path);
        break;
    }
  }

  preTokenizer(v: unknown, path: string, depth = 0): JsonObject | null {
    if (v === null) return null;
    this.depth(path, depth);
    const o = this.object(v, path);
    switch (this.type(o, path, PRE_TOKENIZERS, 'pre-tokenizer')) {
      case 'Sequence': {
        const p = jsonPath(path, 'pretokenizers');
        const items = this.array(o.pretokenizers, p).map((x, i) => this.preTokenizer(x, jsonPath(p, i), depth + 1));
        return { ...o, pretokenizers: items };
      }
      case 'Metaspace':
        this.string(o, 'replacement', path, { optional: true, nonEmpty: true });
        this.string(o, 'str_rep', path, { optional: true });
        this.oneOf(o, 'prepend_scheme', path, PREPEND_SCHEMES);
        this.bool(o, 'add_prefix_space', path);
        this.bool(o, 'split', path);
        break;
      case 'ByteLevel':
        for (const k of ['add_prefix_space', 'trim_offsets', 'use_regex']) this.bool(o, k, path);
        break;
      case 'Split':
        this.pattern(o, 'pattern', path);
        this.oneOf(o, 'behavior', path, BEHAVIORS);
        this.bool(o, 'invert', path);
        break;
      case 'Punctuation':
        this.oneOf(o, 'behavior', path, BEHAVIORS);
        break;
      case 'Digits':
        this.bool(o, 'individual_digits', path);
        break;
      case 'Replace':
        this.pattern(o, 'pattern', path);
        this.string(o, 'content', path);
        break;
      case 'FixedLength':
        // the library steps through the text by `length`: 0, a negative or a missing length never ends
        if (o.length === undefined) return { ...o, length: 5 };
        this.int(o, 'length', path, 1, Number.MAX_SAFE_INTEGER, false);
        break;
    }
    return o;
  }

  /** The model; fills `known` with its tokens. Returns a copy with defaults the library lacks. */
  model(v: unknown, path: string, added: JsonObject[]): JsonObject {
    const o = this.object(v, path);
    let type = o.type;
    if (type === undefined) {
      // the library's own inference for files without "type"
      if (Array.isArray(o.vocab)) type = 'Unigram';
      else if (Object.hasOwn(o, 'continuing_subword_prefix') && Object.hasOwn(o, 'unk_token')) type = Object.hasOwn(o, 'merges') ? 'BPE' : 'WordPiece';
      else this.fail(jsonPath(path, 'type'), `is missing and cannot be told from the other fields (${MODELS.join(', ')})`);
    } else this.type(o, path, MODELS, 'model');
    const out: JsonObject = { ...o };
    if (type === 'Unigram') {
      const p = jsonPath(path, 'vocab');
      const vocab = this.array(o.vocab, p);
      if (vocab.length === 0) this.fail(p, 'is empty');
      if (vocab.length > MAX_TOKEN_ID) this.fail(p, `has ${vocab.length} entries, more than ${MAX_TOKEN_ID}`);
      vocab.forEach((e, i) => {
        if (!Array.isArray(e) || e.length !== 2 || typeof e[0] !== 'string' || typeof e[1] !== 'number' || !Number.isFinite(e[1])) {
          this.fail(jsonPath(p, i), `must be [piece, score] with a string piece and a finite score, got ${preview(e)}`);
        }
        this.known.add(e[0]);
      });
      this.int(o, 'unk_id', path, 0, vocab.length - 1, false);
      this.bool(o, 'byte_fallback', path);
    } else {
      const p = jsonPath(path, 'vocab');
      const vocab = this.object(o.vocab, p);
      for (const [tok, id] of Object.entries(vocab)) {
        if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0 || id >= MAX_TOKEN_ID) {
          this.fail(jsonPath(p, tok), `must be a token id from 0 to ${MAX_TOKEN_ID - 1}, got ${preview(id)}`);
        }
        this.known.add(tok);
      }
    }
    for (const t of added) this.known.add(t.content as string);
    if (type === 'BPE') {
      const p = jsonPath(path, 'merges');
      const merges = this.array(o.merges, p);
      // the library picks the format from the first entry: ["a", "b"] pairs, or "a b" strings
      const pairs = merges.length > 0 && Array.isArray(merges[0]);
      merges.forEach((m, i) => {
        const ok = pairs
          ? Array.isArray(m) && m.length === 2 && typeof m[0] === 'string' && typeof m[1] === 'string'
          : typeof m === 'string' && m.indexOf(' ', 1) > 0;
        if (!ok) this.fail(jsonPath(p, i), `must be ${pairs ? 'a pair of strings like the first merge' : 'a string "left right" like the first merge'}, got ${preview(m)}`);
      });
      const unk = this.string(o, 'unk_token', path, { optional: true, nullable: true });
      if (typeof unk === 'string') this.token(unk, jsonPath(path, 'unk_token'));
      for (const k of ['continuing_subword_prefix', 'end_of_word_suffix', 'continuing_subword_suffix']) this.string(o, k, path, { optional: true, nullable: true });
      for (const k of ['byte_fallback', 'fuse_unk', 'ignore_merges']) this.bool(o, k, path);
      const d = o.dropout;
      if (d !== undefined && d !== null && !(typeof d === 'number' && d >= 0 && d <= 1)) this.fail(jsonPath(path, 'dropout'), `must be null or a number from 0 to 1, got ${preview(d)}`);
    } else if (type === 'WordPiece') {
      // the Rust defaults; the library would emit `undefined` tokens without them
      if (o.unk_token === undefined) out.unk_token = '[UNK]';
      if (o.continuing_subword_prefix === undefined || o.continuing_subword_prefix === null) out.continuing_subword_prefix = '##';
      this.token(out.unk_token, jsonPath(path, 'unk_token'));
      this.string(out, 'continuing_subword_prefix', path);
      this.int(o, 'max_input_chars_per_word', path, 0, Number.MAX_SAFE_INTEGER);
    }
    return out;
  }

  addedTokens(v: unknown, path: string): JsonObject[] {
    if (v === undefined || v === null) return [];
    return this.array(v, path).map((t, i) => {
      const p = jsonPath(path, i);
      const o = this.object(t, p);
      this.int(o, 'id', p, 0, MAX_TOKEN_ID - 1, false);
      this.string(o, 'content', p, { nonEmpty: true });
      for (const k of ['single_word', 'lstrip', 'rstrip', 'normalized', 'special']) this.bool(o, k, p);
      return o;
    });
  }

  postProcessor(v: unknown, path: string, depth = 0): void {
    if (v === null) return;
    this.depth(path, depth);
    const o = this.object(v, path);
    switch (this.type(o, path, POST_PROCESSORS, 'post-processor')) {
      case 'TemplateProcessing': {
        for (const key of ['single', 'pair']) {
          if (key === 'pair' && (o.pair === undefined || o.pair === null)) continue;
          const p = jsonPath(path, key);
          this.array(o[key], p).forEach((item, i) => this.templatePiece(item, jsonPath(p, i)));
        }
        if (o.special_tokens !== undefined && o.special_tokens !== null) this.object(o.special_tokens, jsonPath(path, 'special_tokens'));
        break;
      }
      case 'ByteLevel':
        for (const k of ['add_prefix_space', 'trim_offsets', 'use_regex']) this.bool(o, k, path);
        break;
      case 'BertProcessing':
      case 'RobertaProcessing':
        for (const k of ['sep', 'cls']) {
          const p = jsonPath(path, k);
          const pair = this.array(o[k], p);
          if (pair.length !== 2 || typeof pair[1] !== 'number' || !Number.isSafeInteger(pair[1])) this.fail(p, `must be [token, id], got ${preview(pair)}`);
          this.token(pair[0], jsonPath(p, 0));
        }
        this.bool(o, 'trim_offsets', path);
        this.bool(o, 'add_prefix_space', path);
        break;
      case 'Sequence': {
        const p = jsonPath(path, 'processors');
        this.array(o.processors, p).forEach((x, i) => {
          if (x === null) this.fail(jsonPath(p, i), 'must be a post-processor, got null');
          this.postProcessor(x, jsonPath(p, i), depth + 1);
        });
        break;
      }
    }
  }

  templatePiece(item: unknown, path: string): void {
    const o = this.object(item, path);
    const keys = Object.keys(o);
    if (keys.length !== 1 || (keys[0] !== 'SpecialToken' && keys[0] !== 'Sequence')) this.fail(path, `must be {"SpecialToken": ...} or {"Sequence": ...}, got ${preview(o)}`);
    const p = jsonPath(path, keys[0]!);
    const body = this.object(o[keys[0]!], p);
    if (keys[0] === 'SpecialToken') this.token(body.id, jsonPath(p, 'id'));
    else this.oneOf(body, 'id', p, ['A', 'B'], false);
    this.int(body, 'type_id', p, 0, 255);
  }

  decoder(v: unknown, path: string, depth = 0): void {
    if (v === null) return;
    this.depth(path, depth);
    const o = this.object(v, path);
    switch (this.type(o, path, DECODERS, 'decoder')) {
      case 'ByteLevel':
        for (const k of ['add_prefix_space', 'trim_offsets', 'use_regex']) this.bool(o, k, path);
        break;
      case 'WordPiece':
        this.string(o, 'prefix', path, { optional: true });
        this.bool(o, 'cleanup', path);
        break;
      case 'Metaspace':
        this.string(o, 'replacement', path, { optional: true, nonEmpty: true });
        this.oneOf(o, 'prepend_scheme', path, PREPEND_SCHEMES);
        this.bool(o, 'add_prefix_space', path);
        this.bool(o, 'split', path);
        break;
      case 'BPEDecoder':
        this.string(o, 'suffix', path, { optional: true });
        break;
      case 'CTC':
        this.string(o, 'pad_token', path, { optional: true });
        this.string(o, 'word_delimiter_token', path, { optional: true });
        this.bool(o, 'cleanup', path);
        break;
      case 'Sequence': {
        const p = jsonPath(path, 'decoders');
        this.array(o.decoders, p).forEach((x, i) => {
          if (x === null) this.fail(jsonPath(p, i), 'must be a decoder, got null');
          this.decoder(x, jsonPath(p, i), depth + 1);
        });
        break;
      }
      case 'Replace':
        this.pattern(o, 'pattern', path);
        this.string(o, 'content', path, { optional: true });
        break;
      case 'Strip':
        this.string(o, 'content', path, { optional: true });
        this.int(o, 'start', path, 0, Number.MAX_SAFE_INTEGER);
        this.int(o, 'stop', path, 0, Number.MAX_SAFE_INTEGER);
        break;
    }
  }
}

export interface CheckedTokenizer {
  tokenizer: JsonObject;
  config: JsonObject;
  /** One more than the largest token id. */
  vocabSize: number;
}

/**
 * Validate a tokenizer.json and its tokenizer_config.json; returns copies ready for the library.
 * Components the library requires as keys but that the file may omit default to null.
 */
export function checkTokenizerJson(json: unknown, config: unknown, source: string, configSource: string): CheckedTokenizer {
  const c: Checker = new Checker(source);
  if (!isObject(json)) c.fail('the file', `must hold a JSON object, got ${preview(json)}`);
  const added = c.addedTokens(json.added_tokens, 'added_tokens');
  const model = c.model(json.model, 'model', added);
  c.normalizer(json.normalizer ?? null, 'normalizer');
  const pre = c.preTokenizer(json.pre_tokenizer ?? null, 'pre_tokenizer');
  c.postProcessor(json.post_processor ?? null, 'post_processor');
  c.decoder(json.decoder ?? null, 'decoder');
  const cfg = checkTokenizerConfig(config, configSource);
  let vocabSize = 0;
  if (Array.isArray(model.vocab)) vocabSize = model.vocab.length;
  else for (const id of Object.values(model.vocab as JsonObject)) vocabSize = Math.max(vocabSize, (id as number) + 1);
  for (const t of added) vocabSize = Math.max(vocabSize, (t.id as number) + 1);
  return {
    tokenizer: {
      ...json, added_tokens: added, model, normalizer: json.normalizer ?? null, pre_tokenizer: pre,
      post_processor: json.post_processor ?? null, decoder: json.decoder ?? null,
    },
    config: cfg,
    vocabSize,
  };
}

function checkTokenizerConfig(config: unknown, source: string): JsonObject {
  const c: Checker = new Checker(source);
  if (!isObject(config)) c.fail('the file', `must hold a JSON object, got ${preview(config)}`);
  const extra = config.additional_special_tokens;
  if (extra !== undefined && extra !== null) {
    c.array(extra, 'additional_special_tokens').forEach((t, i) => {
      if (typeof t !== 'string' && !(isObject(t) && typeof t.content === 'string')) {
        c.fail(jsonPath('additional_special_tokens', i), `must be a token string or {"content": ...}, got ${preview(t)}`);
      }
    });
  }
  for (const k of ['remove_space', 'do_lowercase_and_remove_accent', 'clean_up_tokenization_spaces']) c.bool(config, k, '', true);
  // the library reads these only to look tokens up; keep them to strings so a lookup cannot misfire
  for (const k of ['bos_token', 'eos_token', 'pad_token', 'unk_token']) {
    const v = config[k];
    if (v !== undefined && v !== null && typeof v !== 'string' && !(isObject(v) && typeof v.content === 'string')) {
      c.fail(k, `must be a token string or {"content": ...}, got ${preview(v)}`);
    }
  }
  const specials = ((extra ?? []) as (string | JsonObject)[]).map((t) => (typeof t === 'string' ? t : (t.content as string)));
  return { ...config, additional_special_tokens: specials };
}
