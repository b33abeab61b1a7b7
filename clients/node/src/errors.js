'use strict';
// sessionkit's typed errors as they arrive in Node.js.
//
// A failed call ends with a gRPC status code and message, plus the trailer
// `grpc-status-details-bin`: a serialized google.rpc.Status whose `details` are
// google.protobuf.Any values. The server always packs a google.rpc.ErrorInfo (reason,
// domain "sessionkit.dev", metadata), a google.rpc.BadRequest with one field violation
// per invalid field when the request was malformed, and a google.rpc.RetryInfo when
// the call may be repeated after a delay (docs/ERRORS.md lists the reasons).

const path = require('node:path');
const protobuf = require('protobufjs');
const { status: Code } = require('@grpc/grpc-js');

const STATUS_DETAILS_KEY = 'grpc-status-details-bin';
const DOMAIN = 'sessionkit.dev';

// google/rpc/{status,error_details}.proto are vendored from googleapis (Apache-2.0): the
// npm packages that ship them carry every Google API (80 MB) for these two files.
const RPC_PROTOS = path.join(__dirname, '..', 'protos');
const root = new protobuf.Root();
root.resolvePath = (_origin, target) =>
  target.startsWith('google/rpc/') ? path.join(RPC_PROTOS, target) : target;
root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
const Status = root.lookupType('google.rpc.Status');

const CODE_NAMES = Object.fromEntries(Object.entries(Code).map(([name, value]) => [value, name]));

/**
 * Decodes a google.rpc.Status (the bytes of `grpc-status-details-bin`) into plain objects.
 *
 * @param {Buffer|Uint8Array} bytes
 * @returns {{code: number, message: string, errorInfo: ?{reason: string, domain: string,
 *   metadata: Object<string,string>}, fieldViolations: Array<{field: string, description: string}>,
 *   retryDelaySeconds: ?number, details: Array<{typeUrl: string, type: ?string, value: ?Object}>}}
 *   `details` holds every detail as decoded (`value` null for a type this module does not know).
 */
function decodeStatus(bytes) {
  const status = Status.decode(bytes);
  const decoded = {
    code: status.code,
    message: status.message,
    errorInfo: null,
    fieldViolations: [],
    retryDelaySeconds: null,
    details: [],
  };
  for (const any of status.details) {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    const type = root.lookup(typeName);
    if (!(type instanceof protobuf.Type)) {
      decoded.details.push({ typeUrl: any.type_url, type: null, value: null });
      continue;
    }
    const value = type.toObject(type.decode(any.value), { longs: Number, defaults: true });
    decoded.details.push({ typeUrl: any.type_url, type: typeName, value });
    if (typeName === 'google.rpc.ErrorInfo') {
      decoded.errorInfo = { reason: value.reason, domain: value.domain, metadata: value.metadata };
    } else if (typeName === 'google.rpc.BadRequest') {
      decoded.fieldViolations = value.field_violations.map((v) => ({
        field: v.field,
        description: v.description,
      }));
    } else if (typeName === 'google.rpc.RetryInfo' && value.retry_delay) {
      decoded.retryDelaySeconds = value.retry_delay.seconds + value.retry_delay.nanos / 1e9;
    }
  }
  return decoded;
}

/**
 * A failed sessionkit call. `code` is the gRPC status code (number, `codeName` its name),
 * `reason` the stable machine-readable reason (docs/ERRORS.md), `violations` the invalid
 * request fields, `retryAfter` seconds to wait before repeating (or null).
 */
class SessionKitError extends Error {
  constructor({ code, message, reason, domain, metadata, violations, retryAfter, cause }) {
    super(message, cause ? { cause } : undefined);
    this.name = 'SessionKitError';
    this.code = code;
    this.codeName = CODE_NAMES[code] || String(code);
    this.reason = reason;
    this.domain = domain;
    this.metadata = metadata;
    this.violations = violations;
    this.retryAfter = retryAfter;
  }
}

/**
 * The SessionKitError for a grpc-js ServiceError (a failed call). Without status details
 * (an error raised by the transport, not the server), reason is the code's name.
 *
 * @param {import('@grpc/grpc-js').ServiceError} error
 * @returns {SessionKitError}
 */
function fromServiceError(error) {
  const values = error.metadata ? error.metadata.get(STATUS_DETAILS_KEY) : [];
  let status = null;
  if (values.length > 0) {
    try {
      status = decodeStatus(values[0]);
    } catch {
      status = null; // undecodable details: fall back to the bare code, as the Python SDK does
    }
  }
  const code = error.code ?? Code.UNKNOWN;
  return new SessionKitError({
    code,
    message: (status && status.message) || error.details || error.message,
    reason: (status && status.errorInfo && status.errorInfo.reason) || CODE_NAMES[code] || 'UNKNOWN',
    domain: (status && status.errorInfo && status.errorInfo.domain) || '',
    metadata: (status && status.errorInfo && status.errorInfo.metadata) || {},
    violations: status ? status.fieldViolations : [],
    retryAfter: status ? status.retryDelaySeconds : null,
    cause: error,
  });
}

module.exports = { DOMAIN, STATUS_DETAILS_KEY, SessionKitError, decodeStatus, fromServiceError };
