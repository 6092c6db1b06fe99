import { z } from 'zod';
import { CreateFunctionSchema, FunctionSchema, UpdateFunctionSchema } from '../spec/index.ts';
import { ERROR_CODES } from '../core/index.ts';

type Json = Record<string, unknown>;

/** JSON Schema (2020-12, what OpenAPI 3.1 uses) of a zod schema, without the per-schema `$schema`. */
function schemaOf(schema: z.ZodType, io: 'input' | 'output'): Json {
  const { $schema: _drop, ...rest } = z.toJSONSchema(schema, { io, unrepresentable: 'any' }) as Json;
  return rest;
}

const ref = (name: string): Json => ({ $ref: `#/components/schemas/${name}` });
const json = (schema: Json): Json => ({ 'application/json': { schema } });

function errors(...statuses: number[]): Json {
  const out: Json = {};
  for (const s of statuses) {
    const codes = Object.entries(ERROR_CODES)
      .filter(([, v]) => v.status === s)
      .map(([k]) => k);
    out[String(s)] = { description: codes.join(', '), content: json(ref('Error')) };
  }
  return out;
}

const idParam = { name: 'id', in: 'path', required: true, description: 'function id (fn-...) or name', schema: { type: 'string' } };

/** The OpenAPI 3.1 document served at /api/openapi.json, built from the same zod schemas as validation. */
export function buildOpenApi(opts: { version?: string } = {}): Json {
  return {
    openapi: '3.1.0',
    info: {
      title: 'Aether API',
      version: opts.version ?? '0.1.0',
      description: 'Function management (compatible with upstream Aether) and invocation. Errors are always {"error":{"code","message"}}.',
    },
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'admin token (AETHER_ADMIN_TOKEN or <data dir>/admin.token)' } },
      schemas: {
        CreateFunction: schemaOf(CreateFunctionSchema, 'input'),
        UpdateFunction: schemaOf(UpdateFunctionSchema, 'input'),
        Function: schemaOf(FunctionSchema, 'output'),
        Error: {
          type: 'object',
          required: ['error'],
          properties: {
            error: {
              type: 'object',
              required: ['code', 'message'],
              properties: { code: { type: 'string', enum: Object.keys(ERROR_CODES) }, message: { type: 'string' } },
            },
          },
        },
        UploadResult: {
          type: 'object',
          required: ['message', 'code_path', 'code_sha256', 'code_size'],
          properties: {
            message: { const: 'code uploaded' },
            code_path: { type: 'string' },
            code_sha256: { type: 'string', pattern: '^[0-9a-f]{64}$' },
            code_size: { type: 'integer' },
          },
        },
        Invocation: {
          type: 'object',
          required: ['id', 'function_id', 'status', 'status_code', 'duration_ms', 'cold_start', 'instance_id', 'started_at', 'error'],
          properties: {
            id: { type: 'string' },
            function_id: { type: 'string' },
            status: { enum: ['success', 'error', 'timeout'] },
            status_code: { type: 'integer' },
            duration_ms: { type: 'number' },
            cold_start: { type: 'boolean' },
            instance_id: { type: ['string', 'null'] },
            started_at: { type: 'string', format: 'date-time' },
            error: { type: ['string', 'null'] },
          },
        },
        LogEntry: {
          type: 'object',
          required: ['time', 'instance_id', 'stream', 'text'],
          properties: {
            time: { type: 'string', format: 'date-time' },
            instance_id: { type: 'string' },
            stream: { enum: ['stdout', 'stderr', 'system'] },
            text: { type: 'string' },
          },
        },
      },
    },
    security: [{ bearer: [] }],
    paths: {
      '/healthz': {
        get: { summary: 'Liveness', security: [], responses: { 200: { description: 'serving', content: json({ type: 'object', properties: { status: { const: 'ok' } } }) } } },
      },
      '/metrics': {
        get: {
          summary: 'Prometheus metrics (no token when the server is bound to loopback)',
          responses: { 200: { description: 'Prometheus text format', content: { 'text/plain': { schema: { type: 'string' } } } }, ...errors(401) },
        },
      },
      '/api/openapi.json': { get: { summary: 'This document', security: [], responses: { 200: { description: 'OpenAPI 3.1' } } } },
      '/api/functions': {
        get: { summary: 'List functions', responses: { 200: { description: 'all functions ([] when none)', content: json({ type: 'array', items: ref('Function') }) }, ...errors(401) } },
        post: {
          summary: 'Create a function',
          requestBody: { required: true, content: json(ref('CreateFunction')) },
          responses: { 201: { description: 'created', content: json(ref('Function')) }, ...errors(400, 401, 409, 413, 415) },
        },
      },
      '/api/functions/{id}': {
        parameters: [idParam],
        get: { summary: 'Get a function', responses: { 200: { description: 'the function', content: json(ref('Function')) }, ...errors(401, 404) } },
        put: {
          summary: 'Update a function (partial; env_vars replaces the whole map; may rename)',
          requestBody: { required: true, content: json(ref('UpdateFunction')) },
          responses: { 200: { description: 'updated', content: json(ref('Function')) }, ...errors(400, 401, 404, 409, 413, 415) },
        },
        delete: { summary: 'Delete a function, its code and its invocation records', responses: { 204: { description: 'deleted' }, ...errors(401, 404) } },
      },
      '/api/functions/{id}/code': {
        parameters: [idParam],
        post: {
          summary: 'Upload code: a zip or tar.gz as the raw body (any content type) or as multipart field "file"',
          requestBody: {
            required: true,
            content: {
              'application/octet-stream': { schema: { type: 'string', contentMediaType: 'application/octet-stream' } },
              'multipart/form-data': { schema: { type: 'object', required: ['file'], properties: { file: { type: 'string', contentMediaType: 'application/octet-stream' } } } },
            },
          },
          responses: { 200: { description: 'stored', content: json(ref('UploadResult')) }, ...errors(400, 401, 404, 409, 413, 503) },
        },
      },
      '/api/functions/{id}/invocations': {
        parameters: [idParam],
        get: {
          summary: 'Latest invocation records, newest first',
          parameters: [{ name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 1000, default: 100 } }],
          responses: { 200: { description: 'records', content: json({ type: 'array', items: ref('Invocation') }) }, ...errors(400, 401, 404) },
        },
      },
      '/api/functions/{id}/logs': {
        parameters: [idParam],
        get: {
          summary: 'Instance output as NDJSON, one LogEntry per line',
          parameters: [
            { name: 'tail', in: 'query', schema: { type: 'integer', minimum: 0, maximum: 10000, default: 100 } },
            { name: 'follow', in: 'query', schema: { type: 'boolean', default: false } },
          ],
          responses: { 200: { description: 'log lines', content: { 'application/x-ndjson': { itemSchema: ref('LogEntry') } } }, ...errors(400, 401, 404) },
        },
      },
      '/functions/{id}/{path}': {
        parameters: [idParam, { name: 'path', in: 'path', required: true, schema: { type: 'string' }, description: 'forwarded to the function (prefix stripped)' }],
        description: 'Invocation: any method; the request is forwarded to an instance of the function. Not under /api, no admin token.',
        get: {
          summary: 'Invoke (any method)',
          security: [],
          responses: { default: { description: "the function's response; x-aether-invocation-id and x-aether-cold-start headers" }, ...errors(400, 404, 502, 503, 504) },
        },
      },
    },
  };
}
