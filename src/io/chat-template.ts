/** Chat templates (the Jinja templates models ship in tokenizer_config.json) via @huggingface/jinja. */
import { Template } from '@huggingface/jinja';
import { AdaptkitError } from '../tensor/index.js';

export interface ChatMessage {
  role: string;
  content: string;
}

export interface ChatTemplateOptions {
  addGenerationPrompt?: boolean;
  bosToken?: string;
  eosToken?: string;
  extra?: Record<string, unknown>;
}

export function applyChatTemplate(template: string, messages: readonly ChatMessage[], o: ChatTemplateOptions = {}): string {
  let tpl: Template;
  try {
    tpl = new Template(template);
  } catch (e) {
    throw new AdaptkitError(`chat template does not parse: ${(e as Error).message}`);
  }
  try {
    return tpl.render({
      messages,
      add_generation_prompt: o.addGenerationPrompt ?? false,
      bos_token: o.bosToken ?? '',
      eos_token: o.eosToken ?? '',
      ...o.extra,
    });
  } catch (e) {
    throw new AdaptkitError(`chat template failed: ${(e as Error).message}`);
  }
}
