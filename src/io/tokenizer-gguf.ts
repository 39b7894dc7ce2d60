/**
 * Tokenizers from GGUF vocabularies (tokenizer.ggml.*): byte-level BPE ("gpt2"), SentencePiece BPE
 * ("llama") and WordPiece ("bert"), converted to tokenizer.json and run by @huggingface/tokenizers.
 * Every tokenizer.ggml key is checked (type, length against the token list, ids in range) so a
 * broken file is an error naming the file and the key.
 */
import { AdaptkitError } from '../tensor/index.js';
import { type GgufValue, readGgufMetadata } from './gguf.js';
import { preview } from './json.js';
import { type TokenizerFiles, spmTokenizerJson } from './tokenizer-convert.js';
import { HfTokenizer } from './tokenizer-hf.js';

const CONTROL = 3;
// the GPT-2 pre-tokenizer regex (HF's ByteLevel with use_regex)
function byteLevel(addPrefixSpace: boolean) {
  return { type: 'ByteLevel', add_prefix_space: addPrefixSpace, trim_offsets: true, use_regex: true };
}

class Keys {
  constructor(readonly md: Map<string, GgufValue>, readonly path: string) {}

  fail(key: string, msg: string): never {
    throw new AdaptkitError(`${this.path}: ${key} ${msg}`);
  }

  strings(key: string, required: boolean): string[] | null {
    const v = this.md.get(key);
    if (v === undefined && !required) return null;
    if (!Array.isArray(v)) this.fail(key, v === undefined ? 'is missing' : `must be a list of strings, got ${preview(v)}`);
    const bad = v.findIndex((x) => typeof x !== 'string');
    if (bad >= 0) this.fail(key, `must be a list of strings, but item ${bad} is ${preview(v[bad])}`);
    return v as string[];
  }

  /** A list with one number per token (token_type, scores). */
  perToken(key: string, n: number, integers: boolean): number[] | null {
    const v = this.md.get(key);
    if (v === undefined) return null;
    if (!Array.isArray(v)) this.fail(key, `must be a list of numbers, got ${preview(v)}`);
    if (v.length !== n) this.fail(key, `has ${v.length} entries for ${n} tokens`);
    const bad = v.findIndex((x) => typeof x !== 'number' || (integers ? !Number.isInteger(x) : !Number.isFinite(x)));
    if (bad >= 0) this.fail(key, `must hold ${integers ? 'integers' : 'finite numbers'}, but item ${bad} is ${preview(v[bad])}`);
    return v as number[];
  }

  /** A token id, if the key is present: an integer indexing the token list. */
  id(key: string, n: number): number | null {
    const v = this.md.get(key);
    if (v === undefined) return null;
    const id = typeof v === 'bigint' ? (v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= 0n ? Number(v) : -1) : v;
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= n) this.fail(key, `must be a token id below ${n}, got ${preview(v)}`);
    return id;
  }

  bool(key: string): boolean | null {
    const v = this.md.get(key);
    if (v === undefined) return null;
    if (typeof v !== 'boolean') this.fail(key, `must be true or false, got ${preview(v)}`);
    return v;
  }
}

export function ggufTokenizerJson(path: string): TokenizerFiles {
  const k = new Keys(readGgufMetadata(path).metadata, path);
  const model = k.md.get('tokenizer.ggml.model');
  if (model !== 'gpt2' && model !== 'llama' && model !== 'bert') {
    k.fail('tokenizer.ggml.model', model === undefined ? 'is missing' : `${preview(model)} is not supported (gpt2, llama, bert)`);
  }
  const tokens = k.strings('tokenizer.ggml.tokens', true)!;
  if (tokens.length === 0) k.fail('tokenizer.ggml.tokens', 'is empty');
  const n = tokens.length;
  const types = k.perToken('tokenizer.ggml.token_type', n, true) ?? [];
  const bos = k.id('tokenizer.ggml.bos_token_id', n);
  const eos = k.id('tokenizer.ggml.eos_token_id', n);
  const unk = k.id('tokenizer.ggml.unknown_token_id', n);
  // an empty control token can never match text; the tokenizer library rejects it
  const control = new Set(types.flatMap((t, i) => (t === CONTROL && tokens[i] !== '' ? [i] : [])));
  // null prototype: a token named "__proto__" or "constructor" is an ordinary key
  const vocab: Record<string, number> = Object.create(null) as Record<string, number>;
  tokens.forEach((t, i) => {
    if (!(t in vocab)) vocab[t] = i;
  });
  const added = [...control].sort((a, b) => a - b).map((id) => ({
    id, content: tokens[id]!, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  }));
  if (model === 'gpt2') {
    const merges = k.strings('tokenizer.ggml.merges', true)!;
    // llama.cpp splits a merge at its first space after the first character
    const bad = merges.findIndex((m) => m.indexOf(' ', 1) < 0);
    if (bad >= 0) k.fail('tokenizer.ggml.merges', `item ${bad} (${preview(merges[bad])}) is not two tokens separated by a space`);
    return {
      tokenizer: {
        version: '1.0', added_tokens: added, normalizer: null, pre_tokenizer: byteLevel(false), post_processor: null,
        decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
        model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges },
      },
      config: { bos_token: bos !== null ? tokens[bos] : null, eos_token: eos !== null ? tokens[eos] : null, add_bos_token: false, clean_up_tokenization_spaces: false },
    };
  }
  if (model === 'llama') {
    const scores = k.perToken('tokenizer.ggml.scores', n, false) ?? tokens.map((_, i) => -i);
    const addBos = k.bool('tokenizer.ggml.add_bos_token') !== false;
    return spmTokenizerJson({ pieces: tokens, scores, special: control, unkId: unk ?? 0, bosId: bos, eosId: eos, addBos });
  }
  // GGUF marks word-initial WordPiece tokens with "▁" and drops the "##" of continuations
  const wp: Record<string, number> = Object.create(null) as Record<string, number>;
  tokens.forEach((t, i) => {
    const name = control.has(i) ? t : t.startsWith('\u2581') ? t.slice(1) : `##${t}`;
    if (!(name in wp)) wp[name] = i;
  });
  const unkTok = unk !== null ? (control.has(unk) ? tokens[unk]! : Object.keys(wp).find((w) => wp[w] === unk)!) : '[UNK]';
  if (!(unkTok in wp)) k.fail('tokenizer.ggml.unknown_token_id', unk === null ? 'is missing and the vocabulary has no [UNK]' : `names token ${unk}, which the WordPiece vocabulary does not keep`);
  return {
    tokenizer: {
      version: '1.0', added_tokens: added,
      normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: true },
      pre_tokenizer: { type: 'BertPreTokenizer' },
      post_processor: null,
      decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
      model: { type: 'WordPiece', unk_token: unkTok, continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab: wp },
    },
    config: { unk_token: unkTok, do_lower_case: true },
  };
}

export function ggufTokenizer(path: string): HfTokenizer {
  const { tokenizer, config } = ggufTokenizerJson(path);
  return new HfTokenizer(tokenizer, config, path, path);
}
