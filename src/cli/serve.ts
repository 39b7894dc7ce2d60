/** `adaptkit serve`: one base model, many LoRA adapters, an OpenAI-compatible HTTP API. */
import type { Command } from 'commander';
import { basename } from 'node:path';
import { AdaptkitError } from '../tensor/index.js';
import { PROMPT_BYTES_PER_TOKEN, startServer } from '../serve/http.js';
import { resolveModel } from './models.js';
import { loadedPlugins } from '../io/plugins.js';
import { intOption } from './options.js';
import { QUANTIZE_HELP, quantizeLoadOptions } from './quantize.js';

function int(name: string, v: string, min: number): number {
  return intOption(name, v, min);
}

export function registerServeCommand(program: Command): void {
  program
    .command('serve')
    .description('serve a base model with many LoRA adapters over an OpenAI-compatible HTTP API')
    .requiredOption('--model <path>', 'base model (HF folder, Hub id or llama2.c .bin)')
    .option('--tokenizer <path>', 'tokenizer (default: the model folder)')
    .option('--adapters <dir>', 'folder whose subfolders are PEFT LoRA adapters (served by folder name)')
    .option('--port <n>', 'port', '8000')
    .option('--host <h>', 'address to listen on', '127.0.0.1')
    .option('--served-model-name <name>', 'the base model\'s name in the API (default: the model path\'s last part)')
    .option('--max-batch <n>', 'sequences decoded together', '32')
    .option('--kv-cache-mb <n>', 'KV-cache memory budget in MiB', '256')
    .option('--block-size <n>', 'positions per KV-cache block', '16')
    .option('--max-loaded-adapters <n>', 'adapters held in memory at once (LRU beyond that)', '64')
    .option('--max-rank <n>', 'largest LoRA rank accepted', '16')
    .option('--max-queue <n>', 'waiting requests before answering 429', '256')
    .option('--max-tokens-limit <n>', 'largest max_tokens a request may ask', '1024')
    .option('--max-prompt-tokens <n>', 'longest prompt in tokens', '2048')
    .option('--max-prompt-bytes <n>', `longest prompt in UTF-8 bytes, refused before tokenizing (default: ${PROMPT_BYTES_PER_TOKEN} x --max-prompt-tokens)`)
    .option('--context-length <n>', 'prompt + generation limit', '2048')
    .option('--pool-mb <n>', 'cap of the engine\'s idle tensor-buffer pool in MiB (default: --kv-cache-mb)')
    .option('--api-key <key>', 'require "Authorization: Bearer <key>" on /v1 routes; prefer setting $ADAPTKIT_API_KEY, since a command line is visible to every user in ps')
    .option('--allow-runtime-lora', 'serve POST /v1/load_lora_adapter and /v1/unload_lora_adapter (off by default: they answer 404)')
    .option('--lora-root <dir>', 'with --allow-runtime-lora: the folder runtime-loaded adapters must lie under (default: --adapters)')
    .option('--max-adapter-mb <n>', 'with --allow-runtime-lora: largest adapter_model.safetensors accepted, in MiB (default: what rank --max-rank on every linear layer of the model needs)')
    .option('--quantize <format>', `${QUANTIZE_HELP}; adapters are served over the quantized base`)
    .action(async (o: Record<string, string | boolean | undefined>) => {
      const { quantize } = quantizeLoadOptions(o.quantize);
      const model = await resolveModel(String(o.model));
      const str = (v: string | boolean | undefined) => (typeof v === 'string' ? v : undefined);
      if (o.loraRoot !== undefined && !o.allowRuntimeLora) throw new AdaptkitError('--lora-root only applies with --allow-runtime-lora');
      const server = await startServer({
        model, plugins: loadedPlugins(), quantize, tokenizer: str(o.tokenizer), servedModelName: str(o.servedModelName) ?? basename(String(o.model)).replace(/\.bin$/, ''),
        apiKey: str(o.apiKey) ?? process.env.ADAPTKIT_API_KEY,
        maxTokensLimit: int('max-tokens-limit', String(o.maxTokensLimit), 1), maxPromptTokens: int('max-prompt-tokens', String(o.maxPromptTokens), 1),
        maxPromptBytes: o.maxPromptBytes === undefined ? undefined : int('max-prompt-bytes', String(o.maxPromptBytes), 1),
        poolMb: o.poolMb === undefined ? undefined : int('pool-mb', String(o.poolMb), 0),
        allowRuntimeLora: o.allowRuntimeLora === true, loraRoot: str(o.loraRoot),
        maxAdapterMb: o.maxAdapterMb === undefined ? undefined : int('max-adapter-mb', String(o.maxAdapterMb), 1),
        engine: {
          maxBatch: int('max-batch', String(o.maxBatch), 1), kvCacheMb: int('kv-cache-mb', String(o.kvCacheMb), 1), blockSize: int('block-size', String(o.blockSize), 1),
          maxLoadedAdapters: int('max-loaded-adapters', String(o.maxLoadedAdapters), 1), maxRank: int('max-rank', String(o.maxRank), 1),
          maxQueue: int('max-queue', String(o.maxQueue), 1), contextLength: int('context-length', String(o.contextLength), 2), adapterDir: str(o.adapters),
        },
      }, { port: intOption('port', String(o.port), 0, 65535), host: String(o.host) });
      process.stderr.write(`adaptkit: serving on ${server.url}\n`);
      await new Promise<void>((resolve) => {
        const stop = () => {
          process.stderr.write('adaptkit: finishing in-flight requests, then stopping\n');
          void server.close().then(resolve);
        };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
    });
}
