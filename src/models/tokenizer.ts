/** What generation and training need from any tokenizer. */
export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosId: number | null;
  encode(text: string, opts?: { bos?: boolean; eos?: boolean }): number[];
  decode(ids: readonly number[]): string;
}
