import { join } from 'node:path';
import { registerModelFamily } from '../registry.js';
import { parseLlamaConfig } from './config.js';
import { buildLlama } from './load.js';

registerModelFamily({
  name: 'llama',
  modelTypes: ['llama', 'mistral', 'qwen2', 'smollm'],
  build: (raw, w, source) => buildLlama(parseLlamaConfig(raw, join(source, 'config.json')), w),
  ignoresWeight: (n) => n.endsWith('rotary_emb.inv_freq'),
});
