/**
 * The observer's errors: a request the Observer API refuses names the field at fault, so a
 * gRPC client sees INVALID_ARGUMENT with `whitelist[0].source_ip[1]: …`.
 * @module
 */
import { codedErrorFamily } from '../errors/index.ts';

export type ObserverErrorCode =
  | 'ERR_OBSERVER_INVALID_FILTER'
  | 'ERR_OBSERVER_INVALID_REQUEST'
  | 'ERR_OBSERVER_LISTEN'
  /** An agent the relay cannot reach. */
  | 'ERR_OBSERVER_UNAVAILABLE'
  /** A field mask path that names no field of flow.Flow. */
  | 'ERR_OBSERVER_INVALID_FIELD_MASK'
  /** A flow-logs config file (--hubble-flowlogs-config-path) that cannot be applied. */
  | 'ERR_OBSERVER_FLOWLOGS_CONFIG'
  /** An export file that cannot be opened, written or rotated. */
  | 'ERR_OBSERVER_EXPORT_FILE'
  /** A TLS certificate, key or CA file that cannot be read or does not fit. */
  | 'ERR_OBSERVER_TLS'
  /** A flow read after the buffer overwrote it (flows are built from records the buffer keeps). */
  | 'ERR_OBSERVER_OVERWRITTEN';

export class ObserverError extends codedErrorFamily<ObserverErrorCode>('observer') {}

/** A request field that is malformed; `field` is its path in the request, in proto field names. */
export class InvalidRequestError extends ObserverError {
  readonly field: string;
  constructor(code: 'ERR_OBSERVER_INVALID_FILTER' | 'ERR_OBSERVER_INVALID_REQUEST' | 'ERR_OBSERVER_INVALID_FIELD_MASK' | 'ERR_OBSERVER_FLOWLOGS_CONFIG', field: string, reason: string) {
    super(code, `${field}: ${reason}`, { details: { field } });
    this.field = field;
  }
}
