/** What generation and training need from any tokenizer. */
export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosId: number | null;
  /**
   * The token that ends a text in the model's training data, when it is not EOS (llama2.c models
   * were trained with BOS between stories and never saw EOS).
   */
  readonly endOfText?: number | null;
  encode(text: string, opts?: { bos?: boolean; eos?: boolean }): number[];
  decode(ids: readonly number[]): string;
}

/** The token that ends a text: what training appends after a completion, and what generation stops at. */
export function textEnd(tok: Tokenizer): number | null {
  return tok.endOfText !== undefined ? tok.endOfText : tok.eosId;
}

/** The tokens that end generation by default: EOS and the model's end of text. */
export function stopTokensOf(tok: Tokenizer): number[] {
  return [...new Set([tok.eosId, textEnd(tok)].filter((x): x is number => x !== null))];
}
