/**
 * TLS and authentication settings of the etcd client: reading and checking the CA, client
 * certificate and key up front, so a wrong file fails at start naming the file instead of as an
 * opaque handshake error later, and the checks that keep a TLS setting from being silently unused.
 * @module
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { rootCertificates } from 'node:tls';
import type { IOptions } from 'etcd3';
import { StoreError } from './errors.ts';

/** PEM text, or a file holding it. Give one of each pair, not both. */
export interface EtcdTlsOptions {
  /** CA certificate(s) that signed etcd's server certificate. Default: Node's bundled public CAs. */
  readonly ca?: string | Buffer;
  readonly caFile?: string;
  /** Client certificate (chain), for etcd's `--client-cert-auth`. Needs the key. */
  readonly cert?: string | Buffer;
  readonly certFile?: string;
  /** The client certificate's private key (unencrypted PEM). */
  readonly key?: string | Buffer;
  readonly keyFile?: string;
}

/** etcd's own users (`etcdctl auth enable`): the client trades these for a token. */
export interface EtcdAuthOptions {
  readonly username: string;
  readonly password: string;
}

export type EtcdCredentials = NonNullable<IOptions['credentials']>;

const CONTEXT = 'store: connecting to etcd';

async function pem(what: string, inline: string | Buffer | undefined, file: string | undefined): Promise<{ pem: Buffer; source: string } | undefined> {
  if (inline !== undefined && file !== undefined) {
    throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `${CONTEXT}: give the ${what} as PEM or as a file, not both (file ${file})`);
  }
  if (inline !== undefined) return { pem: Buffer.from(inline), source: `${what} (inline PEM)` };
  if (file === undefined) return undefined;
  try {
    return { pem: await readFile(file), source: `${what} file ${file}` };
  } catch (error) {
    throw new StoreError('ERR_STORE_TLS', `${CONTEXT}: cannot read ${what} file ${file}: ${(error as Error).message}`, { cause: error });
  }
}

function parse<R>(source: string, expected: string, parser: () => R): R {
  try {
    return parser();
  } catch (error) {
    throw new StoreError('ERR_STORE_TLS', `${CONTEXT}: ${source} is not ${expected}: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * The gRPC credentials for `tls`, after checking that every file reads and parses and that the
 * key belongs to the certificate.
 */
export async function loadEtcdCredentials(tls: EtcdTlsOptions): Promise<EtcdCredentials> {
  const [ca, cert, key] = await Promise.all([pem('trusted CA', tls.ca, tls.caFile), pem('client certificate', tls.cert, tls.certFile), pem('client key', tls.key, tls.keyFile)]);
  if ((cert === undefined) !== (key === undefined)) {
    const missing = cert === undefined ? 'client certificate (certFile)' : 'client key (keyFile)';
    throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `${CONTEXT}: ${cert?.source ?? key?.source} is given without its ${missing}`);
  }
  if (ca !== undefined) parse(ca.source, 'a PEM certificate', () => new X509Certificate(ca.pem));
  if (cert !== undefined && key !== undefined) {
    const certificate = parse(cert.source, 'a PEM certificate', () => new X509Certificate(cert.pem));
    const privateKey = parse(key.source, 'an unencrypted PEM private key', () => createPrivateKey(key.pem));
    if (!certificate.checkPrivateKey(privateKey)) {
      throw new StoreError('ERR_STORE_TLS', `${CONTEXT}: ${key.source} is not the key of ${cert.source} (${certificate.subject.replace(/\n/g, ', ')})`);
    }
  }
  return {
    // gRPC needs roots whenever it is given a client certificate; without a CA, the public ones.
    rootCertificate: ca?.pem ?? Buffer.from(rootCertificates.join('\n')),
    certChain: cert?.pem,
    privateKey: key?.pem,
  };
}

/**
 * Checks endpoints against the security settings: one scheme for all (the client has one set of
 * channel credentials), and TLS settings only with https:// (over http they would be ignored).
 */
export function checkEndpointSecurity(endpoints: readonly string[], tls: EtcdTlsOptions | undefined, auth: EtcdAuthOptions | undefined): void {
  const plain = endpoints.filter((e) => e.startsWith('http://'));
  if (plain.length > 0 && plain.length < endpoints.length) {
    throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `${CONTEXT}: endpoints mix http:// and https:// (${endpoints.join(', ')}); use https:// for all`);
  }
  if (plain.length > 0 && tls !== undefined) {
    throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `${CONTEXT}: TLS settings are given but endpoint ${plain[0]} is http://; use https://`);
  }
  if (auth !== undefined) {
    if (typeof auth.username !== 'string' || auth.username === '') throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `${CONTEXT}: auth.username must be a non-empty string`);
    if (typeof auth.password !== 'string' || auth.password === '') {
      throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `${CONTEXT}: auth.password of user ${auth.username} must be a non-empty string`);
    }
  }
}

/** A failed TLS handshake, as gRPC reports it (after "No connection established. Last error:"). */
export function isTlsFailure(message: string): boolean {
  return /SSL routines|tls alert|certificate|self[- ]signed|wrong version number|handshake|ERR_SSL|ERR_TLS/i.test(message);
}

/** Why the handshake failed, in words an operator can act on. */
export function tlsFailureHint(message: string): string {
  if (/alert bad certificate|alert certificate required|alert unknown ca|certificate_required/i.test(message)) {
    return 'etcd refused the client certificate (none given, or not signed by a CA etcd trusts: check certFile/keyFile and etcd --trusted-ca-file)';
  }
  if (/unable to verify|self[- ]signed|unable to get (local )?issuer|certificate signature failure/i.test(message)) {
    return "etcd's server certificate is not signed by the trusted CA (check caFile)";
  }
  if (/altnames|hostname|subject alt|IP: .* is not in the cert/i.test(message)) return "etcd's server certificate does not name this endpoint";
  if (/wrong version number|packet length too long/i.test(message)) return 'the endpoint does not speak TLS (is etcd serving http://?)';
  return 'TLS handshake failed';
}
