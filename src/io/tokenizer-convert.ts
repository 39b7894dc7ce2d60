/**
 * A llama2.c vocabulary as a Hugging Face tokenizer.json: SentencePiece-style BPE with byte
 * fallback, merges ranked by the score of the merged piece (what SentencePiece's BPE applies),
 * the Llama normalizer (prepend "▁", spaces to "▁") and decoder.
 */
import type { Llama2cTokenizer } from './tokenizer-llama2c.js';

const SP = '\u2581';

export function llama2cToTokenizerJson(tok: Llama2cTokenizer): { tokenizer: Record<string, unknown>; config: Record<string, unknown> } {
  const dec = new TextDecoder('utf-8', { fatal: false });
  const names = tok.pieces.map((p) => dec.decode(p).replace(/ /g, SP));
  const vocab: Record<string, number> = {};
  names.forEach((n, i) => {
    if (!(n in vocab)) vocab[n] = i;
  });
  const special = new Set([0, 1, 2]);
  const merges: { pair: [string, string]; score: number; id: number }[] = [];
  names.forEach((piece, id) => {
    if (special.has(id) || /^<0x[0-9A-F]{2}>$/.test(piece)) return;
    const chars = [...piece];
    for (let i = 1; i < chars.length; i++) {
      const left = chars.slice(0, i).join('');
      const right = chars.slice(i).join('');
      if (left in vocab && right in vocab) merges.push({ pair: [left, right], score: tok.scores[id]!, id });
    }
  });
  merges.sort((a, b) => b.score - a.score || a.id - b.id || vocab[a.pair[0]]! - vocab[b.pair[0]]!);
  const specialTok = (id: number, content: string) => ({
    id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  });
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [specialTok(0, names[0]!), specialTok(1, names[1]!), specialTok(2, names[2]!)],
    normalizer: {
      type: 'Sequence',
      normalizers: [{ type: 'Prepend', prepend: SP }, { type: 'Replace', pattern: { String: ' ' }, content: SP }],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: names[1], type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: names[1], type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: names[1], type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { [names[1]!]: { id: names[1], ids: [1], tokens: [names[1]] } },
    },
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
      type: 'BPE', dropout: null, unk_token: names[0], continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: true, ignore_merges: false,
      vocab, merges: merges.map((m) => m.pair),
    },
  };
  const config = {
    tokenizer_class: 'LlamaTokenizer',
    bos_token: names[1], eos_token: names[2], unk_token: names[0],
    add_bos_token: true, add_eos_token: false, clean_up_tokenization_spaces: false, legacy: true,
    model_max_length: 1000000000000000019884624838656,
  };
  return { tokenizer, config };
}
