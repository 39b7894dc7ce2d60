/** `adaptkit convert`: a llama2.c checkpoint + tokenizer.bin into a Hugging Face Llama folder. */
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { AdaptkitError, type Tensor } from '../tensor/index.js';
import { writeFileAtomic } from '../io/atomic.js';
import { llama2cHfConfig, readLlama2c } from '../io/llama2c.js';
import { writeSafetensors } from '../io/safetensors.js';
import { llama2cToTokenizerJson } from '../io/tokenizer-convert.js';
import { Llama2cTokenizer } from '../io/tokenizer-llama2c.js';

export interface ConvertOptions {
  overwrite?: boolean;
}

function writeJson(path: string, value: unknown): void {
  writeFileAtomic(path, Buffer.from(`${JSON.stringify(value, null, 2)}\n`));
}

export function convertLlama2c(binPath: string, tokenizerPath: string | null, outDir: string, opts: ConvertOptions = {}): string[] {
  if (existsSync(outDir) && readdirSync(outDir).length > 0 && !opts.overwrite) {
    throw new AdaptkitError(`${outDir} is not empty (pass --overwrite to replace its files)`);
  }
  const ckpt = readLlama2c(binPath);
  mkdirSync(outDir, { recursive: true });
  const tensors: Record<string, Tensor> = {};
  for (const [k, v] of ckpt.weights) tensors[k] = v;
  writeSafetensors(join(outDir, 'model.safetensors'), tensors, { metadata: { format: 'pt' } });
  const config = llama2cHfConfig(ckpt.config);
  writeJson(join(outDir, 'config.json'), config);
  writeJson(join(outDir, 'generation_config.json'), { bos_token_id: 1, eos_token_id: 2 });
  const written = ['config.json', 'generation_config.json', 'model.safetensors'];
  if (tokenizerPath) {
    const tok = Llama2cTokenizer.fromFile(tokenizerPath, ckpt.config.vocabSize);
    const { tokenizer, config: tcfg } = llama2cToTokenizerJson(tok);
    writeJson(join(outDir, 'tokenizer.json'), tokenizer);
    writeJson(join(outDir, 'tokenizer_config.json'), tcfg);
    written.push('tokenizer.json', 'tokenizer_config.json');
  }
  for (const t of Object.values(tensors)) t.dispose();
  return written;
}
