/**
 * Tokenizers from GGUF vocabularies (tokenizer.ggml.*): byte-level BPE ("gpt2"), SentencePiece BPE
 * ("llama") and WordPiece ("bert"), converted to tokenizer.json and run by @huggingface/tokenizers.
 */
import { AdaptkitError } from '../tensor/index.js';
import { type GgufValue, readGgufMetadata } from './gguf.js';
import { type TokenizerFiles, spmTokenizerJson } from './tokenizer-convert.js';
import { HfTokenizer } from './tokenizer-hf.js';

const CONTROL = 3;
// the GPT-2 pre-tokenizer regex (HF's ByteLevel with use_regex)
function byteLevel(addPrefixSpace: boolean) {
  return { type: 'ByteLevel', add_prefix_space: addPrefixSpace, trim_offsets: true, use_regex: true };
}

function strings(v: GgufValue | undefined, key: string, path: string): string[] {
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw new AdaptkitError(`${path}: ${key} is missing or not a list of strings`);
  return v as string[];
}

function int(v: GgufValue | undefined): number | null {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  return null;
}

export function ggufTokenizerJson(path: string): TokenizerFiles {
  const md = readGgufMetadata(path).metadata;
  const model = md.get('tokenizer.ggml.model');
  const tokens = strings(md.get('tokenizer.ggml.tokens'), 'tokenizer.ggml.tokens', path);
  const types = (md.get('tokenizer.ggml.token_type') as number[] | undefined) ?? [];
  const bos = int(md.get('tokenizer.ggml.bos_token_id'));
  const eos = int(md.get('tokenizer.ggml.eos_token_id'));
  const unk = int(md.get('tokenizer.ggml.unknown_token_id'));
  const control = new Set(types.flatMap((t, i) => (t === CONTROL ? [i] : [])));
  const vocab: Record<string, number> = {};
  tokens.forEach((t, i) => {
    if (!(t in vocab)) vocab[t] = i;
  });
  const added = [...control].sort((a, b) => a - b).map((id) => ({
    id, content: tokens[id]!, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  }));
  if (model === 'gpt2') {
    const merges = strings(md.get('tokenizer.ggml.merges'), 'tokenizer.ggml.merges', path);
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
    const scores = (md.get('tokenizer.ggml.scores') as number[] | undefined) ?? tokens.map((_, i) => -i);
    const addBos = md.get('tokenizer.ggml.add_bos_token') !== false;
    return spmTokenizerJson({ pieces: tokens, scores, special: control, unkId: unk ?? 0, bosId: bos, eosId: eos, addBos });
  }
  if (model === 'bert') {
    // GGUF marks word-initial WordPiece tokens with "▁" and drops the "##" of continuations
    const wp: Record<string, number> = {};
    tokens.forEach((t, i) => {
      const name = control.has(i) ? t : t.startsWith('\u2581') ? t.slice(1) : `##${t}`;
      if (!(name in wp)) wp[name] = i;
    });
    const unkTok = unk !== null ? tokens[unk]! : '[UNK]';
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
  throw new AdaptkitError(`${path}: tokenizer.ggml.model ${JSON.stringify(model)} is not supported (gpt2, llama, bert)`);
}

export function ggufTokenizer(path: string): HfTokenizer {
  const { tokenizer, config } = ggufTokenizerJson(path);
  return new HfTokenizer(tokenizer, config);
}
