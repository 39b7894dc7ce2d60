import { join } from 'node:path';
import { registerModelFamily } from '../registry.js';
import { parseViTConfig } from './config.js';
import { buildViT, vitIgnoresWeight } from './weights.js';

registerModelFamily({
  name: 'vit',
  modelTypes: ['vit'],
  build: (raw, w, source) => buildViT(parseViTConfig(raw, join(source, 'config.json')), w),
  ignoresWeight: vitIgnoresWeight,
});
