/** CLI commands over models: generate, convert, score. */
import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { AdaptkitError, noGrad, tensor, tidy, logSoftmax } from '../tensor/index.js';
import { loadModel, loadTokenizer } from '../models/load.js';
import { generate } from '../models/generate.js';
import { convertLlama2c } from '../models/convert.js';
import { initModelFolder } from '../models/init.js';
import { isHubId, snapshotDownload } from '../io/hub.js';
import { AdapterModel } from '../adapters/index.js';
import { regularFileSize } from '../adapters/files.js';
import type { Tokenizer } from '../models/tokenizer.js';
import { SAMPLING_RANGES } from '../models/sampling-rules.js';
import { intOption, numberOption, optionalNumber } from './options.js';
import { QUANTIZE_HELP, quantizeLoadOptions, reportQuantization } from './quantize.js';

/** A local path for a model argument: Hub ids are downloaded (or found in the cache) first. */
export async function resolveModel(arg: string): Promise<string> {
  if (!isHubId(arg)) return arg;
  let last = '';
  const path = await snapshotDownload(arg, {
    onProgress: (file, done, total) => {
      if (!process.stderr.isTTY) return;
      const line = `downloading ${file}: ${(done / 2 ** 20).toFixed(1)}${total ? ` / ${(total / 2 ** 20).toFixed(1)}` : ''} MiB`;
      if (line !== last) process.stderr.write(`\r${line}`);
      last = line;
    },
  });
  if (last) process.stderr.write('\n');
  return path;
}


/** The name the adapter generated from --context gets next to the generator. */
const GENERATED = 'context';

/**
 * --context: the generator loaded as `am`'s default adapter reads the file's text (through the
 * base model), and the adapter it generates becomes the active one; --save-lora saves it.
 */
function useContext(am: AdapterModel, tok: Tokenizer, file: string, saveDir: string | undefined, maxPositions: number | undefined): void {
  const gen = am.adapters.get('default');
  if (!gen) throw new AdaptkitError('--context needs --adapter: a generator of adapters that reads the context');
  if (!gen.condition || !gen.generated) throw new AdaptkitError(`--context: the --adapter (${gen.method.peftType}) does not generate adapters from a context`);
  regularFileSize(file, 'context file');
  // a text file's final line break ends the file, not the text
  const text = readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  if (text.trim() === '') throw new AdaptkitError(`--context ${file}: the file is empty; an adapter is generated from some text`);
  const ids = tok.encode(text, { bos: true });
  if (maxPositions !== undefined && ids.length > maxPositions) throw new AdaptkitError(`--context ${file}: ${ids.length} tokens, more than the model's ${maxPositions} positions`);
  const made = tidy(() => noGrad(() => {
    gen.condition!(am, tensor(ids, [1, ids.length], { dtype: 'i32' }));
    return gen.generated!();
  }));
  gen.condition(am, null);
  const inst = am.add(GENERATED, made.config, { source: `the adapter generated from ${file}` });
  inst.loadStateDict(made.tensors, `the adapter generated from ${file}`);
  for (const t of made.tensors.values()) t.dispose();
  am.setActive([GENERATED]);
  if (saveDir) am.save(saveDir, GENERATED);
}

export function registerModelCommands(program: Command): void {
  program
    .command('generate')
    .description('generate text from a model (HF folder or llama2.c .bin), streamed to stdout')
    .requiredOption('--model <path>', 'HF model folder, Hub id (org/name) or llama2.c checkpoint (.bin)')
    .option('--tokenizer <path>', 'tokenizer (llama2.c tokenizer.bin, or an HF folder); default: the model folder')
    .option('--prompt <text>', 'prompt text (default: empty, generation starts from BOS)', '')
    .option('--max-tokens <n>', 'tokens to generate', '256')
    .option('--temperature <t>', '0 = greedy', '0')
    .option('--top-k <k>', 'sample from the k most likely tokens')
    .option('--top-p <p>', 'nucleus sampling threshold')
    .option('--repetition-penalty <r>', 'HF-style repetition penalty', '1')
    .option('--seed <s>', 'sampling seed', '0')
    .option('--stop <text...>', 'stop strings')
    .option('--adapter <dir>', 'apply a PEFT adapter folder')
    .option('--context <file>', 'with a generator of adapters as --adapter: generate the adapter from this text file (the base model reads it) and generate with that adapter')
    .option('--save-lora <dir>', 'with --context: also save the generated adapter there, as a PEFT adapter folder')
    .option('--quantize <format>', QUANTIZE_HELP)
    .action(async (o: Record<string, string | string[] | undefined>) => {
      if (o.saveLora && !o.context) throw new AdaptkitError('--save-lora saves the adapter generated from --context; give --context FILE');
      const load = quantizeLoadOptions(o.quantize);
      const path = await resolveModel(String(o.model));
      const loaded = loadModel(path, load);
      reportQuantization(loaded);
      const { model } = loaded;
      const am = new AdapterModel(model);
      if (o.adapter) am.load(String(o.adapter));
      const tok = loadTokenizer(path, o.tokenizer as string | undefined, model.config.vocabSize);
      if (o.context) useContext(am, tok, String(o.context), o.saveLora as string | undefined, (model.config as { maxPositions?: number }).maxPositions);
      else if (am.adapters.get('default')?.condition) process.stderr.write('adaptkit: the --adapter generates adapters from a context; without --context it leaves the model unchanged\n');
      const prompt = tok.encode(String(o.prompt ?? ''), { bos: true });
      process.stdout.write(String(o.prompt ?? ''));
      generate(am, tok, prompt, {
        maxTokens: intOption('max-tokens', o.maxTokens as string, 1),
        temperature: numberOption('temperature', o.temperature as string, SAMPLING_RANGES.temperature),
        topK: optionalNumber('top-k', o.topK as string | undefined, SAMPLING_RANGES.top_k),
        topP: optionalNumber('top-p', o.topP as string | undefined, SAMPLING_RANGES.top_p),
        repetitionPenalty: numberOption('repetition-penalty', o.repetitionPenalty as string, SAMPLING_RANGES.repetition_penalty),
        seed: numberOption('seed', o.seed as string, SAMPLING_RANGES.seed),
        stopStrings: o.stop as string[] | undefined,
      }, (piece) => process.stdout.write(piece));
      process.stdout.write('\n');
    });

  program
    .command('convert')
    .description('convert a llama2.c checkpoint (+ tokenizer.bin) into a Hugging Face Llama folder')
    .requiredOption('--model <path>', 'llama2.c checkpoint (.bin)')
    .option('--tokenizer <path>', 'llama2.c tokenizer.bin')
    .requiredOption('--out <dir>', 'output folder')
    .option('--overwrite', 'replace files in a non-empty output folder')
    .action((o: { model: string; tokenizer?: string; out: string; overwrite?: boolean }) => {
      const files = convertLlama2c(o.model, o.tokenizer ?? null, o.out, { overwrite: o.overwrite });
      console.log(`wrote ${files.join(', ')} to ${o.out}`);
    });

  program
    .command('init')
    .description('write a randomly initialized model of any supported family (model_type vit, llama, gpt2, bert, ...) from a config.json, as a Hugging Face folder')
    .requiredOption('--config <file>', 'a config.json in the Hugging Face layout (model_type and sizes; initializer_range sets the init std, default 0.02)')
    .requiredOption('--out <dir>', 'output folder (config.json + model.safetensors), written atomically')
    .option('--seed <n>', 'seed of the initialization', '0')
    .option('--overwrite', 'replace a non-empty output folder')
    .action((o: { config: string; out: string; seed: string; overwrite?: boolean }) => {
      const model = initModelFolder(o.config, o.out, { seed: numberOption('seed', o.seed, SAMPLING_RANGES.seed), overwrite: o.overwrite });
      console.log(`wrote ${o.out} (${model.adapterDescriptor().family}, ${model.numParameters()} parameters)`);
    });

  program
    .command('score')
    .description('logits and NLL of a text or token ids, as one JSON object')
    .requiredOption('--model <path>', 'HF model folder or llama2.c checkpoint (.bin)')
    .option('--tokenizer <path>', 'tokenizer (default: the model folder)')
    .option('--text <text>', 'text to score (BOS is added)')
    .option('--token-ids <ids>', 'comma-separated token ids')
    .option('--json', 'print JSON (the default)')
    .option('--adapter <dir>', 'apply a PEFT adapter folder')
    .option('--quantize <format>', QUANTIZE_HELP)
    .action(async (o: { model: string; tokenizer?: string; text?: string; tokenIds?: string; adapter?: string; quantize?: string }) => {
      const load = quantizeLoadOptions(o.quantize);
      const path = await resolveModel(o.model);
      const loaded = loadModel(path, load);
      reportQuantization(loaded);
      const { model } = loaded;
      const am = new AdapterModel(model);
      if (o.adapter) am.load(o.adapter);
      let ids: number[];
      if (o.tokenIds !== undefined) {
        ids = o.tokenIds.split(',').map((s) => Number(s.trim()));
        if (ids.some((i) => !Number.isInteger(i) || i < 0 || i >= model.config.vocabSize)) {
          throw new AdaptkitError(`--token-ids must be integers in [0, ${model.config.vocabSize}), got "${o.tokenIds}"`);
        }
      } else if (o.text !== undefined) {
        ids = loadTokenizer(path, o.tokenizer, model.config.vocabSize).encode(o.text, { bos: true });
      } else {
        throw new AdaptkitError('score needs --text or --token-ids');
      }
      if (ids.length === 0) throw new AdaptkitError('nothing to score: no tokens');
      console.log(JSON.stringify(scoreIds(am, ids)));
    });
}

export interface ScoreResult {
  token_ids: number[];
  argmax: number[];
  last_logits: number[];
  nll: number | null;
}

/** Argmax at every position, the last position's logits, mean NLL of tokens after the first. */
export function scoreIds(model: { forward: (ids: ReturnType<typeof tensor>) => ReturnType<typeof tensor> }, ids: number[]): ScoreResult {
  return tidy(() => noGrad(() => {
    const full = model.forward(tensor(ids, [1, ids.length], { dtype: 'i32' }));
    // prompt-tuning adapters put virtual positions first: score the real ones
    const logits = full.narrow(1, full.shape[1]! - ids.length, ids.length);
    const V = logits.shape[2]!;
    const flat = logits.toArray() as Float32Array;
    const lp = logSoftmax(logits).toArray() as Float32Array;
    const argmax: number[] = [];
    let nll = 0;
    for (let t = 0; t < ids.length; t++) {
      let best = 0;
      for (let j = 1; j < V; j++) if (flat[t * V + j]! > flat[t * V + best]!) best = j;
      argmax.push(best);
      if (t + 1 < ids.length) nll -= lp[t * V + ids[t + 1]!]!;
    }
    return {
      token_ids: ids,
      argmax,
      last_logits: Array.from(flat.subarray((ids.length - 1) * V)),
      nll: ids.length > 1 ? nll / (ids.length - 1) : null,
    };
  }));
}
