/** The HTTP API's errors in OpenAI's shape. */

/** What a request's handlers hear when its client has left; nothing is sent then. */
export const CLIENT_GONE = 499;

export class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly type = 'invalid_request_error', readonly param: string | null = null, readonly code: string | null = null) {
    super(message);
  }
}

/** OpenAI's error body. */
export const errorBody = (message: string, type: string, param: string | null = null, code: string | null = null) => ({ error: { message, type, param, code } });

/** The error type and code OpenAI gives a status the engine answers with. */
export const engineErrorKind = (status: number): { type: string; code: string | null } => status === 429
  ? { type: 'rate_limit_error', code: null }
  : status === 404 ? { type: 'invalid_request_error', code: 'model_not_found' } : { type: status >= 500 ? 'server_error' : 'invalid_request_error', code: null };
