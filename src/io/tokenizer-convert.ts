/**
 * Vocabularies from other formats (llama2.c tokenizer.bin, GGUF) as Hugging Face tokenizer.json
 * objects, so that one tokenizer implementation (@huggingface/tokenizers) runs them all.
 */
import type { Llama2cTokenizer } from './tokenizer-llama2c.js';

const SP = '\u2581';

export interface TokenizerFiles {
  tokenizer: Record<string, unknown>;
  config: Record<string, unknown>;
}

function addedToken(id: number, content: string) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}

export interface SpmVocab {
  /** Pieces with "▁" for spaces. */
  pieces: string[];
  scores: ArrayLike<number>;
  /** Control tokens (BOS, EOS, ...) that never merge. */
  special: ReadonlySet<number>;
  unkId: number;
  bosId: number | null;
  eosId: number | null;
  addBos: boolean;
}

/**
 * SentencePiece BPE with byte fallback: merges ranked by the score of the merged piece (what
 * SentencePiece's BPE applies), the Llama normalizer (prepend "▁", spaces to "▁") and decoder.
 */
export function spmTokenizerJson(v: SpmVocab): TokenizerFiles {
  // null prototype: a piece named "__proto__" or "constructor" is an ordinary key
  const vocab: Record<string, number> = Object.create(null) as Record<string, number>;
  v.pieces.forEach((n, i) => {
    if (!(n in vocab)) vocab[n] = i;
  });
  const merges: { pair: [string, string]; score: number; id: number }[] = [];
  v.pieces.forEach((piece, id) => {
    if (v.special.has(id) || /^<0x[0-9A-Fa-f]{2}>$/.test(piece)) return;
    // every split at a code-point boundary; string slices, not joined arrays, so a long piece
    // costs one pass of lookups rather than rebuilding both halves at each cut
    for (let at = 0; ;) {
      const cp = piece.codePointAt(at);
      if (cp === undefined) break;
      at += cp > 0xffff ? 2 : 1;
      if (at >= piece.length) break;
      const left = piece.slice(0, at);
      if (!(left in vocab)) continue;
      const right = piece.slice(at);
      if (right in vocab) merges.push({ pair: [left, right], score: v.scores[id]!, id });
    }
  });
  merges.sort((a, b) => b.score - a.score || a.id - b.id || vocab[a.pair[0]]! - vocab[b.pair[0]]!);
  const bos = v.bosId !== null ? v.pieces[v.bosId]! : null;
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [...v.special].sort((a, b) => a - b).map((id) => addedToken(id, v.pieces[id]!)),
    normalizer: {
      type: 'Sequence',
      normalizers: [{ type: 'Prepend', prepend: SP }, { type: 'Replace', pattern: { String: ' ' }, content: SP }],
    },
    pre_tokenizer: null,
    post_processor: bos && v.addBos ? {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: bos, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { [bos]: { id: bos, ids: [v.bosId], tokens: [bos] } },
    } : null,
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: SP }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE', dropout: null, unk_token: v.pieces[v.unkId], continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: true, ignore_merges: false,
      vocab, merges: merges.map((m) => m.pair),
    },
  };
  const config = {
    tokenizer_class: 'LlamaTokenizer',
    bos_token: bos, eos_token: v.eosId !== null ? v.pieces[v.eosId] : null, unk_token: v.pieces[v.unkId],
    add_bos_token: v.addBos, add_eos_token: false, clean_up_tokenization_spaces: false, legacy: true,
  };
  return { tokenizer, config };
}

export function llama2cToTokenizerJson(tok: Llama2cTokenizer): TokenizerFiles {
  const dec = new TextDecoder('utf-8', { fatal: false });
  return spmTokenizerJson({
    pieces: tok.pieces.map((p) => dec.decode(p).replace(/ /g, SP)),
    scores: tok.scores,
    special: new Set([0, 1, 2]),
    unkId: 0,
    bosId: 1,
    eosId: 2,
    addBos: true,
  });
}
