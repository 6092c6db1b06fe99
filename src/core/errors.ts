/**
 * The one catalogue of coded errors. Every code here is listed in docs/errors.md (a unit test keeps
 * the two in sync). HTTP handlers turn an AetherError into
 * `{"error":{"code":"AETHER_ERR_…","message":"…"}}` with `status`.
 */
export const ERROR_CODES = {
  AETHER_ERR_INVALID_JSON: { status: 400, text: 'request body is not valid JSON' },
  AETHER_ERR_VALIDATION: { status: 400, text: 'a field is missing or invalid' },
  AETHER_ERR_UNAUTHORIZED: { status: 401, text: 'missing or wrong bearer token' },
  AETHER_ERR_ROUTE_NOT_FOUND: { status: 404, text: 'no such route' },
  AETHER_ERR_FUNCTION_NOT_FOUND: { status: 404, text: 'no such function' },
  AETHER_ERR_METHOD_NOT_ALLOWED: { status: 405, text: 'method not allowed on this route' },
  AETHER_ERR_REQUEST_TIMEOUT: { status: 408, text: 'the request was not received in time' },
  AETHER_ERR_NAME_TAKEN: { status: 409, text: 'a function with this name already exists' },
  AETHER_ERR_CONFLICT: { status: 409, text: 'the resource changed concurrently; retry' },
  AETHER_ERR_PAYLOAD_TOO_LARGE: { status: 413, text: 'request body exceeds the limit' },
  AETHER_ERR_UNSUPPORTED_MEDIA_TYPE: { status: 415, text: 'content type not accepted here' },
  AETHER_ERR_HEADERS_TOO_LARGE: { status: 431, text: 'request headers are too large' },
  AETHER_ERR_ARCHIVE_INVALID: { status: 400, text: 'archive is not a readable zip or tar.gz' },
  AETHER_ERR_ARCHIVE_UNSAFE: { status: 400, text: 'archive has an absolute path, a .. component, a link out or a device file' },
  AETHER_ERR_ARCHIVE_TOO_LARGE: { status: 400, text: 'archive unpacks to more than the size or entry limit' },
  AETHER_ERR_ENTRYPOINT_MISSING: { status: 400, text: "archive does not contain the function's entrypoint" },
  AETHER_ERR_NO_CODE: { status: 400, text: 'no code uploaded for this function' },
  AETHER_ERR_EXCEEDS_CAPACITY: { status: 400, text: 'memory_mb or vcpu larger than any agent can hold' },
  AETHER_ERR_COLD_START_FAILED: { status: 503, text: 'the function could not be started' },
  AETHER_ERR_NO_CAPACITY: { status: 503, text: 'no agent has capacity for this instance' },
  AETHER_ERR_SANDBOX_UNAVAILABLE: { status: 503, text: "no live agent offers the function's sandbox" },
  AETHER_ERR_UNAVAILABLE: { status: 503, text: 'a backing service is unavailable; retry later' },
  AETHER_ERR_TIMEOUT: { status: 504, text: "the function did not answer within its timeout_ms" },
  AETHER_ERR_UPSTREAM: { status: 502, text: 'the instance failed while answering' },
  AETHER_ERR_UPSTREAM_UNREACHED: { status: 503, text: 'no instance could be reached; the request was not delivered' },
  AETHER_ERR_SERVICE_NOT_FOUND: { status: 404, text: 'no such service' },
  AETHER_ERR_WEBHOOK_SIGNATURE: { status: 401, text: 'missing or wrong X-Hub-Signature-256' },
  AETHER_ERR_WEBHOOK_DISABLED: { status: 404, text: 'the deploy webhook is not configured (set AETHER_WEBHOOK_SECRET)' },
  AETHER_ERR_VMM: { status: 500, text: 'the microVM monitor refused a request or failed' },
  AETHER_ERR_IMAGE_INVALID: { status: 400, text: 'the image source is not a readable directory, docker-save or OCI layout archive' },
  AETHER_ERR_GUEST_BUILD: { status: 500, text: 'a VM guest part (aether-init, initramfs, root image) could not be built' },
  AETHER_ERR_CONTAINER_UNAVAILABLE: { status: 503, text: 'this agent cannot run image or rootfs artifacts in its process sandbox' },
  AETHER_ERR_INSTANCE_STATE: { status: 500, text: 'an instance was asked for a state change its state machine does not allow' },
  AETHER_ERR_INTERNAL: { status: 500, text: 'internal error' },
} as const satisfies Record<string, { status: number; text: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;

export class AetherError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  /**
   * Details for logs, invocation records and the authenticated API only (e.g. a program's last
   * output): never part of the HTTP body, which anonymous invokers may see.
   */
  readonly detail: string | undefined;
  constructor(code: ErrorCode, message?: string, options?: { cause?: unknown; detail?: string }) {
    super(message ?? ERROR_CODES[code].text, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'AetherError';
    this.code = code;
    this.status = ERROR_CODES[code].status;
    this.detail = options?.detail;
  }

  toJSON(): { error: { code: ErrorCode; message: string } } {
    return { error: { code: this.code, message: this.message } };
  }
}

export function isAetherError(err: unknown): err is AetherError {
  return err instanceof AetherError;
}

/** The JSON body for any error; unknown errors become INTERNAL without leaking a stack. */
export function errorBody(err: unknown): { status: number; body: string } {
  const e = isAetherError(err) ? err : new AetherError('AETHER_ERR_INTERNAL');
  return { status: e.status, body: JSON.stringify(e.toJSON()) };
}
