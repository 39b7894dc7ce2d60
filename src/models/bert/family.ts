import { join } from 'node:path';
import { registerModelFamily } from '../registry.js';
import { buildBert, parseBertConfig } from './model.js';

registerModelFamily({
  name: 'bert',
  modelTypes: ['bert'],
  build: (raw, w, source) => buildBert(parseBertConfig(raw, join(source, 'config.json')), w),
  // position-id buffers and the pretraining heads
  ignoresWeight: (n) => n.endsWith('position_ids') || n.startsWith('cls.'),
});
