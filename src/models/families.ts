/** Every model family adaptkit reads: one import each. */
import './llama/family.js';
import './gpt2/family.js';
import './bert/family.js';
import './vit/family.js';
