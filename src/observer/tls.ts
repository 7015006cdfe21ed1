/**
 * The certificate files of the Observer API's TLS ends (an agent's or the relay's listener, the
 * relay's and `ciliate observe`'s client side), read and checked once at start: a missing file,
 * one that holds no certificate or key, or a key of another certificate is an error naming the
 * setting and the file, not a handshake failure later.
 * @module
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ObserverError } from './errors.ts';

/** The files of a TLS listener; with client CAs, clients must present a certificate one of them signed. */
export interface ObserverTls {
  certFile: string;
  keyFile: string;
  /** CAs whose client certificates are accepted; none: clients are not asked for one. */
  clientCaFiles: string[];
}

/** The setting (flag) names a TLS end's files came from, for errors. */
export interface TlsSettingNames {
  cert: string;
  key: string;
  /** The CA list: clients' CAs on a listener, servers' CAs on a client. */
  cas: string;
}

/** A TLS listener's certificate chain, key and (mTLS) client CAs, in PEM. */
export interface ServerTlsMaterial {
  cert: Buffer;
  key: Buffer;
  /** Set: clients must present a certificate these CAs signed. */
  clientCa?: Buffer;
}

/** What a TLS client presents and trusts, in PEM; no CA: the system's roots. */
export interface ClientTlsMaterial {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

function fail(setting: string, file: string, reason: string, cause?: unknown): never {
  throw new ObserverError('ERR_OBSERVER_TLS', `--${setting} ${file}: ${reason}`, { cause, details: { setting, file } });
}

function read(setting: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (error) {
    return fail(setting, file, `cannot be read (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`, error);
  }
}

function certificate(setting: string, file: string, pem: Buffer): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (error) {
    return fail(setting, file, `holds no PEM certificate (${(error as Error).message})`, error);
  }
}

function cas(setting: string, files: readonly string[]): Buffer | undefined {
  if (files.length === 0) return undefined;
  return Buffer.concat(
    files.map((file) => {
      const pem = read(setting, file);
      certificate(setting, file, pem);
      return pem;
    }),
  );
}

/** A certificate file and its key file: both readable, and the key the certificate's. */
function pair(names: TlsSettingNames, certFile: string, keyFile: string): { cert: Buffer; key: Buffer } {
  const cert = read(names.cert, certFile);
  const key = read(names.key, keyFile);
  const x509 = certificate(names.cert, certFile, cert);
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch (error) {
    return fail(names.key, keyFile, `holds no PEM private key (${(error as Error).message})`, error);
  }
  if (!x509.checkPrivateKey(privateKey)) fail(names.key, keyFile, `is not the key of --${names.cert} ${certFile}`);
  return { cert, key };
}

/** Reads and checks a listener's files; `names` are the settings they came from. */
export function readServerTls(tls: ObserverTls, names: TlsSettingNames): ServerTlsMaterial {
  if (!tls.certFile || !tls.keyFile) {
    throw new ObserverError('ERR_OBSERVER_TLS', `TLS needs both --${names.cert} and --${names.key}${tls.clientCaFiles.length > 0 ? ` (--${names.cas} asks for client certificates over TLS)` : ''}`);
  }
  return { ...pair(names, tls.certFile, tls.keyFile), clientCa: cas(names.cas, tls.clientCaFiles) };
}

/** Reads and checks a client's files (any may be absent: then the system's roots, no certificate). */
export function readClientTls(files: { caFiles: readonly string[]; certFile?: string; keyFile?: string }, names: TlsSettingNames): ClientTlsMaterial {
  if (Boolean(files.certFile) !== Boolean(files.keyFile)) {
    throw new ObserverError('ERR_OBSERVER_TLS', `--${names.cert} and --${names.key} go together; set both or neither`);
  }
  return { ca: cas(names.cas, files.caFiles), ...(files.certFile && files.keyFile ? pair(names, files.certFile, files.keyFile) : {}) };
}
