import { join } from 'node:path';
import { registerModelFamily } from '../registry.js';
import { buildGPT2, parseGPT2Config } from './model.js';

registerModelFamily({
  name: 'gpt2',
  modelTypes: ['gpt2'],
  build: (raw, w, source) => buildGPT2(parseGPT2Config(raw, join(source, 'config.json')), w),
  // causal-mask buffers, and the head that is tied to the token embedding
  ignoresWeight: (n) => /attn\.(masked_)?bias$/.test(n) || n === 'lm_head.weight',
});
