/**
 * The one error src/net throws for text that is not an address or prefix. It carries a stable
 * `code` and a `problem` so that callers with their own error families (IPAM, identity, node
 * routing) can translate it into their messages without matching on text.
 * @module
 */

export type NetErrorCode =
  /** Text that is not an IPv4 or IPv6 address. */
  | 'ERR_NET_INVALID_ADDRESS'
  /** Text that is not a prefix: bad address part, missing or out-of-range length, host bits set. */
  | 'ERR_NET_INVALID_PREFIX';

/**
 * What was wrong, for callers that word their own messages:
 * - `syntax`: the address part does not parse;
 * - `family`: it parses, but as the family the caller refused;
 * - `missing-length`: a prefix without `/n`;
 * - `length`: `/n` is not a number in 0–32 (IPv4) or 0–128 (IPv6);
 * - `host-bits`: bits beyond the prefix length are set and the caller asked to reject that.
 */
export type NetParseProblem = 'syntax' | 'family' | 'missing-length' | 'length' | 'host-bits';

export class NetParseError extends Error {
  readonly code: NetErrorCode;
  /** The text that failed to parse, as given. */
  readonly input: string;
  readonly problem: NetParseProblem;
  /** The reason alone, without the input: "prefix length must be 0–32". */
  readonly reason: string;

  constructor(code: NetErrorCode, input: string, problem: NetParseProblem, reason: string) {
    super(`${code === 'ERR_NET_INVALID_ADDRESS' ? 'invalid IP address' : 'invalid IP prefix'} ${JSON.stringify(input)}: ${reason}`);
    this.name = 'NetParseError';
    this.code = code;
    this.input = input;
    this.problem = problem;
    this.reason = reason;
  }

  /** Whether `value` is a NetParseError (optionally with this code); works across copies of the module. */
  static is(value: unknown, code?: NetErrorCode): value is NetParseError {
    return (
      value instanceof Error &&
      value.name === 'NetParseError' &&
      typeof (value as NetParseError).code === 'string' &&
      (value as NetParseError).code.startsWith('ERR_NET_') &&
      (code === undefined || (value as NetParseError).code === code)
    );
  }
}
