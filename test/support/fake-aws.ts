/**
 * fake-aws: an in-process HTTP server that speaks enough of AWS KMS and STS for
 * the real `@aws-sdk/client-kms` / `@aws-sdk/client-sts` clients to talk to it
 * through an endpoint override (`endpoint: server.endpoint`, or the env vars
 * AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_KMS / AWS_ENDPOINT_URL_STS).
 *
 * One listener on 127.0.0.1 serves three things:
 *   - KMS, AWS JSON 1.1 protocol: POST + `X-Amz-Target: TrentService.<Op>`.
 *     Operations: DescribeKey, GenerateDataKey, Encrypt, Decrypt.
 *     Ciphertexts are real AES-256-GCM under per-key random material, with the
 *     canonical JSON of the EncryptionContext as AAD.
 *   - STS, AWS Query protocol: form-encoded `Action=...`, XML responses.
 *     Operations: AssumeRole, GetCallerIdentity.
 *   - An admin API under `/__admin/<method>` (JSON) so another process can drive
 *     a server started by `fake-aws-server.ts`. It ignores every injected fault.
 *
 * Authentication parses the access key id out of the SigV4 `Authorization`
 * header (`Credential=AKID/date/region/service/aws4_request`) and checks the
 * `X-Amz-Security-Token` of session credentials. Signatures are NOT verified.
 *
 * Only node built-ins are used.
 */
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

export type FakeService = 'kms' | 'sts';
export type OutageMode = 'refuse' | '503' | 'hang';

export interface CreateKeyOptions {
  /** SYMMETRIC_DEFAULT (default), RSA_2048, ECC_NIST_P256, HMAC_256, ... */
  keySpec?: string;
  /** Defaults from keySpec: ENCRYPT_DECRYPT, SIGN_VERIFY (ECC) or GENERATE_VERIFY_MAC (HMAC). */
  keyUsage?: string;
  /** Enabled (default), Disabled, PendingDeletion, PendingImport, Unavailable, ... */
  state?: string;
  /** Defaults to the server's region. Keys are regional, as in AWS. */
  region?: string;
  /** Principals (role ARNs, assumed-role ARNs, `arn:aws:iam::ACCT:root`, globs) the key policy lets in. Default: everybody. */
  keyPolicyAllows?: string[];
  /** Defaults to the server's account id. */
  accountId?: string;
  description?: string;
  /** AWS_KMS (default) or EXTERNAL. */
  origin?: string;
}

export interface CreateRoleOptions {
  /** `arn:aws:iam::<account>:role/<optional/path/>NAME` */
  arn: string;
  /** ExternalId demanded by the trust policy; null = no ExternalId condition. */
  requireExternalId: string | null;
  /** Caller ARNs (globs, or `arn:aws:iam::ACCT:root`) trusted to assume the role. Default: any base (non-assumed) caller. */
  trustedPrincipals?: string[];
  /** Identity policy actions, e.g. `kms:Decrypt` or `kms:*`. Default: the four supported KMS actions. */
  allowedActions?: string[];
  /** Identity policy resources (key ARNs or globs). Default: all keys. */
  allowedKeyArns?: string[];
}

export interface OutageOptions {
  /** Default: both services. */
  service?: FakeService;
  /** '503' (default): immediate 503; 'refuse': socket destroyed; 'hang': never answered. */
  mode?: OutageMode;
}

export interface RequestLogEntry {
  service: FakeService;
  operation: string;
  /** Access key id from the Authorization header ('' if none). */
  accessKeyId: string;
  /** Caller principal ARN, once authenticated. */
  principalArn?: string;
  /** KeyId exactly as sent in the request. */
  keyId?: string;
  /** Key ARN the request resolved to (for Decrypt: the key named by the ciphertext). */
  keyArn?: string;
  encryptionContext?: Record<string, string>;
  /** Retry attempt number reported by the SDK (`amz-sdk-request: attempt=N`). */
  attempt?: number;
  /** HTTP status sent; undefined while pending or when the request hung; 0 when the socket was destroyed. */
  status?: number;
  /** Error code sent (or 'Hang' / 'ConnectionReset' for those outage modes). */
  errorName?: string;
}

export interface FakeAws {
  endpoint: string;
  region: string;
  accountId: string;
  /** Operator credentials; principal arn:aws:iam::<account>:user/operator. */
  baseCredentials: { accessKeyId: string; secretAccessKey: string };
  createKey(opts?: CreateKeyOptions): { keyId: string; arn: string };
  setKeyState(keyIdOrArn: string, state: string): void;
  /** Extra: `alias/name` -> key, usable as KeyId (plain or alias ARN). */
  createAlias(aliasName: string, keyIdOrArn: string): void;
  createRole(opts: CreateRoleOptions): void;
  /** Extra: another base (IAM user) identity, e.g. to test an untrusted caller. */
  createCredentials(principalArn: string): { accessKeyId: string; secretAccessKey: string };
  setOutage(on: boolean, opts?: OutageOptions): void;
  /** The next `count` requests (of `service`, or any) are throttled; 'always' until cleared; 0 clears. */
  setThrottle(count: number | 'always', service?: FakeService): void;
  /** Delay every request (no keyArn) or requests for one key; 0 clears. */
  setLatency(ms: number, keyArn?: string): void;
  /** The first `successes` calls of `operation` pass; every later one fails with `errorName` until cleared. */
  failAfter(operation: string, successes: number, errorName: string): void;
  clearFaults(): void;
  /** Extra: empties `calls` and `requests` (in place). */
  resetCounters(): void;
  /** Requests received per operation, faulted ones included. Live object. */
  calls: Record<string, number>;
  /** Every non-admin request, in arrival order. Live array. */
  requests: RequestLogEntry[];
  stop(): Promise<void>;
}

export interface StartFakeAwsOptions {
  /** 0 (default) = random free port. */
  port?: number;
  /** Default 'us-east-1'. */
  region?: string;
  /** Maximum lifetime of AssumeRole credentials; default 3600. */
  sessionSeconds?: number;
  /** May base (non-assumed) credentials call KMS? Default true. */
  baseCredentialsMayUseKms?: boolean;
  /** Default '111122223333'. */
  accountId?: string;
}

export const SUPPORTED_KMS_ACTIONS = ['kms:GenerateDataKey', 'kms:Encrypt', 'kms:Decrypt', 'kms:DescribeKey'];

export async function startFakeAws(opts: StartFakeAwsOptions = {}): Promise<FakeAws> {
  const server = new FakeAwsServer(opts);
  await server.listen(opts.port ?? 0);
  return server;
}

// ---------------------------------------------------------------------------
// Internal model
// ---------------------------------------------------------------------------

const KEY_STATES = [
  'Creating', 'Enabled', 'Disabled', 'PendingDeletion', 'PendingImport',
  'PendingReplicaDeletion', 'Unavailable', 'Updating',
];
const STS_XMLNS = 'https://sts.amazonaws.com/doc/2011-06-15/';
const ADMIN_PREFIX = '/__admin/';
const MAX_PLAINTEXT = 4096;
const BLOB_VERSION = 0x01;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;

interface Key {
  keyId: string;
  arn: string;
  region: string;
  accountId: string;
  keySpec: string;
  keyUsage: string;
  state: string;
  origin: string;
  description: string;
  creationDate: Date;
  deletionDate?: Date;
  material: Buffer;
  keyPolicyAllows: string[] | null;
}

interface Role {
  arn: string;
  name: string;
  accountId: string;
  roleId: string;
  requireExternalId: string | null;
  trustedPrincipals: string[] | null;
  allowedActions: string[];
  allowedKeyArns: string[] | null;
}

interface User {
  accessKeyId: string;
  secretAccessKey: string;
  arn: string;
  userId: string;
  accountId: string;
}

interface Session {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  role: Role;
  arn: string; // arn:aws:sts::ACCT:assumed-role/NAME/SESSION
  assumedRoleId: string; // AROA...:SESSION
  expiresAt: number;
}

type Caller = { kind: 'user'; user: User } | { kind: 'session'; session: Session };

const callerArn = (c: Caller): string => (c.kind === 'user' ? c.user.arn : c.session.arn);
const callerAccount = (c: Caller): string => (c.kind === 'user' ? c.user.accountId : c.session.role.accountId);

/** An error answered in the protocol's wire format; `code` becomes the SDK error's `name`. */
class AwsError extends Error {
  constructor(readonly code: string, message: string, readonly status: number = defaultStatus(code)) {
    super(message);
  }
}

function defaultStatus(code: string): number {
  switch (code) {
    case 'AccessDenied':
    case 'InvalidClientTokenId':
    case 'MissingAuthenticationToken':
      return 403;
    case 'KMSInternalException':
    case 'InternalFailure':
    case 'InternalError':
      return 500;
    case 'ServiceUnavailableException':
    case 'ServiceUnavailable':
    case 'DependencyTimeoutException':
      return 503;
    default:
      return 400;
  }
}

/** A parsed non-admin request on its way through the fault gates to a handler. */
interface ApiCall {
  service: FakeService;
  operation: string;
  req: http.IncomingMessage;
  res: http.ServerResponse;
  log: RequestLogEntry;
  /** Signing region from the credential scope (falls back to the server's region). */
  region: string;
  /** Key the request is about, when known before running it (for per-key latency). */
  keyArnHint?: string;
  /** Runs the operation; returns the protocol-specific result or throws AwsError. */
  run: (call: ApiCall) => unknown;
  send: (result: unknown) => void;
  sendError: (err: AwsError) => void;
}

interface FailRule {
  remaining: number;
  errorName: string;
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

class FakeAwsServer implements FakeAws {
  endpoint = '';
  readonly region: string;
  readonly accountId: string;
  readonly baseCredentials: { accessKeyId: string; secretAccessKey: string };
  readonly calls: Record<string, number> = {};
  readonly requests: RequestLogEntry[] = [];

  private readonly sessionSeconds: number;
  private readonly baseCredentialsMayUseKms: boolean;
  private readonly http: http.Server;

  private readonly keys = new Map<string, Key>(); // by key id (uuid)
  private readonly aliases = new Map<string, string>(); // alias/name -> key id
  private readonly roles = new Map<string, Role>(); // by role ARN
  private readonly users = new Map<string, User>(); // by access key id
  private readonly sessions = new Map<string, Session>(); // by access key id

  // Faults
  private readonly outages = new Map<FakeService, OutageMode>();
  private readonly throttles = new Map<FakeService | 'any', number>(); // Infinity = always
  private globalLatencyMs = 0;
  private readonly keyLatencyMs = new Map<string, number>(); // by key ARN
  private readonly failRules = new Map<string, FailRule>(); // by operation

  private readonly hung = new Set<http.ServerResponse>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private stopped = false;

  constructor(opts: StartFakeAwsOptions) {
    this.region = opts.region ?? 'us-east-1';
    this.accountId = opts.accountId ?? '111122223333';
    this.sessionSeconds = opts.sessionSeconds ?? 3600;
    this.baseCredentialsMayUseKms = opts.baseCredentialsMayUseKms ?? true;
    this.baseCredentials = this.createCredentials(`arn:aws:iam::${this.accountId}:user/operator`);
    this.http = http.createServer((req, res) => {
      this.onRequest(req, res).catch((err) => {
        if (!res.headersSent && !res.destroyed) sendJson(res, 500, { message: String(err) });
      });
    });
  }

  listen(port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen(port, '127.0.0.1', () => {
        this.http.off('error', reject);
        const { port: actual } = this.http.address() as AddressInfo;
        this.endpoint = `http://127.0.0.1:${actual}`;
        resolve();
      });
    });
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.releaseHung();
    await new Promise<void>((resolve) => {
      this.http.close(() => resolve());
      this.http.closeAllConnections();
    });
  }

  // ----- admin: identities, keys, roles ------------------------------------

  createCredentials(principalArn: string): { accessKeyId: string; secretAccessKey: string } {
    const m = /^arn:aws[\w-]*:(?:iam|sts)::(\d{12}):/.exec(principalArn);
    if (!m) throw new Error(`createCredentials: not a principal ARN: ${principalArn}`);
    const user: User = {
      accessKeyId: 'AKIA' + randomId(16),
      secretAccessKey: randomSecret(),
      arn: principalArn,
      userId: 'AIDA' + randomId(17),
      accountId: m[1],
    };
    this.users.set(user.accessKeyId, user);
    return { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey };
  }

  createKey(opts: CreateKeyOptions = {}): { keyId: string; arn: string } {
    const keySpec = opts.keySpec ?? 'SYMMETRIC_DEFAULT';
    const state = opts.state ?? 'Enabled';
    assertKeyState(state);
    const keyId = crypto.randomUUID();
    const region = opts.region ?? this.region;
    const accountId = opts.accountId ?? this.accountId;
    const arn = `arn:aws:kms:${region}:${accountId}:key/${keyId}`;
    const key: Key = {
      keyId,
      arn,
      region,
      accountId,
      keySpec,
      keyUsage: opts.keyUsage ?? defaultKeyUsage(keySpec),
      state,
      origin: opts.origin ?? (state === 'PendingImport' ? 'EXTERNAL' : 'AWS_KMS'),
      description: opts.description ?? '',
      creationDate: new Date(),
      material: crypto.randomBytes(32),
      keyPolicyAllows: opts.keyPolicyAllows ? [...opts.keyPolicyAllows] : null,
    };
    if (state === 'PendingDeletion') key.deletionDate = new Date(Date.now() + 30 * 86400_000);
    this.keys.set(keyId, key);
    return { keyId, arn };
  }

  setKeyState(keyIdOrArn: string, state: string): void {
    assertKeyState(state);
    const key = this.lookupKey(keyIdOrArn);
    if (!key) throw new Error(`setKeyState: unknown key ${keyIdOrArn}`);
    key.state = state;
    key.deletionDate = state === 'PendingDeletion' ? new Date(Date.now() + 30 * 86400_000) : undefined;
  }

  createAlias(aliasName: string, keyIdOrArn: string): void {
    if (!/^alias\/[\w/-]+$/.test(aliasName) || aliasName.startsWith('alias/aws/')) {
      throw new Error(`createAlias: invalid alias name ${aliasName}`);
    }
    const key = this.lookupKey(keyIdOrArn);
    if (!key) throw new Error(`createAlias: unknown key ${keyIdOrArn}`);
    this.aliases.set(aliasName, key.keyId);
  }

  createRole(opts: CreateRoleOptions): void {
    const m = /^arn:aws[\w-]*:iam::(\d{12}):role\/(?:[^/]+\/)*([\w+=,.@-]{1,64})$/.exec(opts.arn ?? '');
    if (!m) throw new Error(`createRole: not a role ARN: ${opts.arn}`);
    if (opts.requireExternalId === undefined) throw new Error('createRole: requireExternalId must be a string or null');
    this.roles.set(opts.arn, {
      arn: opts.arn,
      accountId: m[1],
      name: m[2],
      roleId: 'AROA' + randomId(17),
      requireExternalId: opts.requireExternalId,
      trustedPrincipals: opts.trustedPrincipals ? [...opts.trustedPrincipals] : null,
      allowedActions: [...(opts.allowedActions ?? SUPPORTED_KMS_ACTIONS)],
      allowedKeyArns: opts.allowedKeyArns ? [...opts.allowedKeyArns] : null,
    });
  }

  // ----- admin: faults and counters -----------------------------------------

  setOutage(on: boolean, opts: OutageOptions = {}): void {
    const services: FakeService[] = opts.service ? [opts.service] : ['kms', 'sts'];
    const mode = opts.mode ?? '503';
    if (!['refuse', '503', 'hang'].includes(mode)) throw new Error(`setOutage: unknown mode ${mode}`);
    for (const s of services) {
      if (on) this.outages.set(s, mode);
      else this.outages.delete(s);
    }
    if (!on) this.releaseHung();
  }

  setThrottle(count: number | 'always', service?: FakeService): void {
    const n = count === 'always' ? Infinity : count;
    if (typeof n !== 'number' || Number.isNaN(n) || n < 0) throw new Error(`setThrottle: bad count ${count}`);
    if (n === 0) this.throttles.delete(service ?? 'any');
    else this.throttles.set(service ?? 'any', n);
  }

  setLatency(ms: number, keyArn?: string): void {
    if (typeof ms !== 'number' || !(ms >= 0)) throw new Error(`setLatency: bad ms ${ms}`);
    if (keyArn === undefined) {
      this.globalLatencyMs = ms;
      return;
    }
    const arn = this.lookupKey(keyArn)?.arn ?? keyArn;
    if (ms === 0) this.keyLatencyMs.delete(arn);
    else this.keyLatencyMs.set(arn, ms);
  }

  failAfter(operation: string, successes: number, errorName: string): void {
    if (!operation || !errorName || !(successes >= 0)) throw new Error('failAfter: need operation, successes >= 0, errorName');
    this.failRules.set(operation, { remaining: successes, errorName });
  }

  clearFaults(): void {
    this.outages.clear();
    this.throttles.clear();
    this.globalLatencyMs = 0;
    this.keyLatencyMs.clear();
    this.failRules.clear();
    this.releaseHung();
  }

  resetCounters(): void {
    for (const k of Object.keys(this.calls)) delete this.calls[k];
    this.requests.length = 0;
  }

  private releaseHung(): void {
    for (const res of this.hung) res.socket?.destroy();
    this.hung.clear();
  }

  // ----- HTTP entry point ----------------------------------------------------

  private async onRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const body = await readBody(req);
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    if (url.pathname.startsWith(ADMIN_PREFIX)) {
      this.handleAdmin(req, res, url.pathname.slice(ADMIN_PREFIX.length), body);
      return;
    }
    const target = header(req, 'x-amz-target');
    if (target !== undefined) {
      await this.dispatch(this.kmsCall(req, res, target, body));
      return;
    }
    const params = new URLSearchParams(url.search);
    if (req.method === 'POST' && (header(req, 'content-type') ?? '').includes('x-www-form-urlencoded')) {
      for (const [k, v] of new URLSearchParams(body.toString('utf8'))) params.append(k, v);
    }
    const action = params.get('Action');
    if (action) {
      await this.dispatch(this.stsCall(req, res, action, params));
      return;
    }
    sendJson(res, 404, { message: 'fake-aws: neither a KMS (X-Amz-Target) nor an STS (Action=) request' });
  }

  /** The pipeline shared by both protocols: count, log, fault gates, latency, run, answer. */
  private async dispatch(call: ApiCall): Promise<void> {
    const { service, operation, log } = call;
    this.calls[operation] = (this.calls[operation] ?? 0) + 1;
    this.requests.push(log);

    const outage = this.outages.get(service);
    if (outage === 'refuse') {
      log.status = 0;
      log.errorName = 'ConnectionReset';
      call.req.socket.destroy();
      return;
    }
    if (outage === 'hang') {
      log.errorName = 'Hang';
      this.hung.add(call.res);
      call.res.on('close', () => this.hung.delete(call.res));
      return;
    }

    let result: unknown;
    try {
      if (outage === '503') {
        throw new AwsError(service === 'kms' ? 'ServiceUnavailableException' : 'ServiceUnavailable',
          'Service Unavailable (fake-aws outage)', 503);
      }
      this.takeThrottle(service);
      this.checkFailAfter(operation);
      await this.sleep(Math.max(this.globalLatencyMs, this.keyLatencyMs.get(call.keyArnHint ?? '') ?? 0));
      result = call.run(call);
    } catch (e) {
      const err = e instanceof AwsError
        ? e
        : new AwsError(service === 'kms' ? 'KMSInternalException' : 'InternalFailure', String(e), 500);
      log.status = err.status;
      log.errorName = err.code;
      if (!call.res.destroyed) call.sendError(err);
      return;
    }
    log.status = 200;
    if (!call.res.destroyed) call.send(result);
  }

  private takeThrottle(service: FakeService): void {
    for (const slot of [service, 'any'] as const) {
      const left = this.throttles.get(slot);
      if (left === undefined) continue;
      if (left !== Infinity) {
        if (left <= 1) this.throttles.delete(slot);
        else this.throttles.set(slot, left - 1);
      }
      throw service === 'kms'
        ? new AwsError('ThrottlingException', 'Rate exceeded', 400)
        : new AwsError('Throttling', 'Rate exceeded', 400);
    }
  }

  private checkFailAfter(operation: string): void {
    const rule = this.failRules.get(operation);
    if (!rule) return;
    if (rule.remaining > 0) {
      rule.remaining--;
      return;
    }
    throw new AwsError(rule.errorName, `Injected failure: ${operation} fails with ${rule.errorName} (fake-aws failAfter)`);
  }

  private sleep(ms: number): Promise<void> {
    if (ms <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.timers.delete(t);
        resolve();
      }, ms);
      this.timers.add(t);
    });
  }

  // ----- authentication --------------------------------------------------------

  private authenticate(call: ApiCall): Caller {
    const kms = call.service === 'kms';
    const akid = call.log.accessKeyId;
    if (!akid) {
      throw kms
        ? new AwsError('MissingAuthenticationTokenException', 'Missing Authentication Token', 400)
        : new AwsError('MissingAuthenticationToken', 'Request is missing Authentication Token', 403);
    }
    const invalid = kms
      ? new AwsError('UnrecognizedClientException', 'The security token included in the request is invalid.', 400)
      : new AwsError('InvalidClientTokenId', 'The security token included in the request is invalid.', 403);

    let caller: Caller;
    const user = this.users.get(akid);
    const session = this.sessions.get(akid);
    if (user) {
      caller = { kind: 'user', user };
    } else if (session) {
      if (header(call.req, 'x-amz-security-token') !== session.sessionToken) throw invalid;
      if (Date.now() >= session.expiresAt) {
        throw kms
          ? new AwsError('ExpiredTokenException', 'The security token included in the request is expired', 400)
          : new AwsError('ExpiredToken', 'The security token included in the request is expired', 400);
      }
      caller = { kind: 'session', session };
    } else {
      throw invalid;
    }
    call.log.principalArn = callerArn(caller);
    return caller;
  }

  // ----- KMS -----------------------------------------------------------------------

  private kmsCall(req: http.IncomingMessage, res: http.ServerResponse, target: string, body: Buffer): ApiCall {
    const [prefix, operation = ''] = target.split('.', 2);
    let input: Record<string, unknown> | undefined;
    try {
      const parsed: unknown = body.length ? JSON.parse(body.toString('utf8')) : {};
      if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) input = parsed as Record<string, unknown>;
    } catch {
      input = undefined;
    }
    const base = this.callBase('kms', operation || target, req, res);
    if (input) {
      if (typeof input.KeyId === 'string') base.log.keyId = input.KeyId;
      if (isStringRecord(input.EncryptionContext)) base.log.encryptionContext = { ...input.EncryptionContext };
    }
    return {
      ...base,
      keyArnHint: input && this.keyArnHint(input, base.region),
      run: (call) => {
        if (prefix !== 'TrentService') throw new AwsError('UnknownOperationException', `Unknown target ${target}`);
        if (!input) throw new AwsError('SerializationException', 'Request body is not a JSON object');
        switch (operation) {
          case 'DescribeKey': return this.kmsDescribeKey(call, input);
          case 'GenerateDataKey': return this.kmsGenerateDataKey(call, input);
          case 'Encrypt': return this.kmsEncrypt(call, input);
          case 'Decrypt': return this.kmsDecrypt(call, input);
          default: throw new AwsError('UnknownOperationException', `fake-aws does not implement KMS ${operation}`);
        }
      },
      send: (result) => sendJson(res, 200, result, 'application/x-amz-json-1.1'),
      sendError: (err) => {
        res.setHeader('x-amzn-ErrorType', err.code);
        sendJson(res, err.status, { __type: err.code, message: err.message }, 'application/x-amz-json-1.1');
      },
    };
  }

  private kmsDescribeKey(call: ApiCall, input: Record<string, unknown>): unknown {
    const caller = this.authenticate(call);
    const key = this.resolveKey(call, requiredString(input, 'KeyId'));
    this.authorizeKms(caller, 'kms:DescribeKey', key);
    const symmetric = key.keySpec === 'SYMMETRIC_DEFAULT';
    return {
      KeyMetadata: {
        AWSAccountId: key.accountId,
        KeyId: key.keyId,
        Arn: key.arn,
        CreationDate: key.creationDate.getTime() / 1000,
        Enabled: key.state === 'Enabled',
        Description: key.description,
        KeyUsage: key.keyUsage,
        KeyState: key.state,
        ...(key.deletionDate ? { DeletionDate: key.deletionDate.getTime() / 1000 } : {}),
        Origin: key.origin,
        KeyManager: 'CUSTOMER',
        CustomerMasterKeySpec: key.keySpec,
        KeySpec: key.keySpec,
        ...(key.keyUsage === 'ENCRYPT_DECRYPT'
          ? { EncryptionAlgorithms: symmetric ? ['SYMMETRIC_DEFAULT'] : ['RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256'] }
          : {}),
        ...(key.keyUsage === 'SIGN_VERIFY' ? { SigningAlgorithms: signingAlgorithms(key.keySpec) } : {}),
        MultiRegion: false,
      },
    };
  }

  private kmsGenerateDataKey(call: ApiCall, input: Record<string, unknown>): unknown {
    const caller = this.authenticate(call);
    const key = this.resolveKey(call, requiredString(input, 'KeyId'));
    this.authorizeKms(caller, 'kms:GenerateDataKey', key);
    this.assertSymmetricUsable(key);
    const context = encryptionContext(input);
    const { KeySpec: spec, NumberOfBytes: n } = input;
    let bytes: number;
    if (spec !== undefined && n !== undefined) {
      throw new AwsError('ValidationException', 'Please specify either number of bytes or key spec.');
    } else if (spec === 'AES_256' || spec === 'AES_128') {
      bytes = spec === 'AES_256' ? 32 : 16;
    } else if (spec !== undefined) {
      throw new AwsError('ValidationException',
        `1 validation error detected: Value '${String(spec)}' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]`);
    } else if (typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= 1024) {
      bytes = n;
    } else {
      throw new AwsError('ValidationException', 'Please specify either number of bytes or key spec.');
    }
    const plaintext = crypto.randomBytes(bytes);
    return {
      CiphertextBlob: seal(key, plaintext, context).toString('base64'),
      Plaintext: plaintext.toString('base64'),
      KeyId: key.arn,
    };
  }

  private kmsEncrypt(call: ApiCall, input: Record<string, unknown>): unknown {
    const caller = this.authenticate(call);
    const key = this.resolveKey(call, requiredString(input, 'KeyId'));
    this.authorizeKms(caller, 'kms:Encrypt', key);
    this.assertSymmetricUsable(key);
    const plaintext = requiredBlob(input, 'Plaintext');
    if (plaintext.length < 1 || plaintext.length > MAX_PLAINTEXT) {
      throw new AwsError('ValidationException',
        `1 validation error detected: Value at 'plaintext' failed to satisfy constraint: Member must have length between 1 and ${MAX_PLAINTEXT}`);
    }
    return {
      CiphertextBlob: seal(key, plaintext, encryptionContext(input)).toString('base64'),
      KeyId: key.arn,
      EncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
    };
  }

  private kmsDecrypt(call: ApiCall, input: Record<string, unknown>): unknown {
    const caller = this.authenticate(call);
    const blob = parseBlob(requiredBlob(input, 'CiphertextBlob'));
    const key = blob && this.keys.get(blob.keyId);
    if (!blob || !key || key.region !== call.region) {
      throw new AwsError('InvalidCiphertextException',
        'The ciphertext is not a fake-aws ciphertext of a key in this region.');
    }
    if (typeof input.KeyId === 'string' && this.resolveKey(call, input.KeyId).keyId !== key.keyId) {
      throw new AwsError('IncorrectKeyException',
        'The key ID in the request does not identify a CMK that can perform this operation.');
    }
    call.log.keyArn = key.arn;
    this.authorizeKms(caller, 'kms:Decrypt', key);
    this.assertSymmetricUsable(key);
    const plaintext = open(key, blob, encryptionContext(input));
    if (!plaintext) {
      throw new AwsError('InvalidCiphertextException',
        'Decryption failed: the ciphertext was tampered with or the EncryptionContext differs from the one used to encrypt.');
    }
    return { KeyId: key.arn, Plaintext: plaintext.toString('base64'), EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' };
  }

  /** Finds a key by uuid, key ARN, `alias/x` or alias ARN, regardless of region. */
  private lookupKey(ref: string): Key | undefined {
    const aliasArn = /^arn:aws[\w-]*:kms:[^:]+:\d{12}:(alias\/.+)$/.exec(ref);
    const alias = aliasArn ? aliasArn[1] : ref.startsWith('alias/') ? ref : undefined;
    if (alias) {
      const id = this.aliases.get(alias);
      return id === undefined ? undefined : this.keys.get(id);
    }
    const keyArn = /^arn:aws[\w-]*:kms:[^:]+:\d{12}:key\/(.+)$/.exec(ref);
    const key = this.keys.get(keyArn ? keyArn[1] : ref);
    return key && (!keyArn || key.arn === ref) ? key : undefined;
  }

  /** Like AWS: a key is only visible in its own region. */
  private resolveKey(call: ApiCall, ref: string): Key {
    const key = this.lookupKey(ref);
    if (!key || key.region !== call.region) {
      const shown = ref.startsWith('arn:') ? ref
        : ref.startsWith('alias/') ? `arn:aws:kms:${call.region}:${this.accountId}:${ref}`
        : `arn:aws:kms:${call.region}:${this.accountId}:key/${ref}`;
      throw new AwsError('NotFoundException',
        ref.includes('alias/') ? `Alias ${shown} is not found.` : `Key '${shown}' does not exist`);
    }
    call.log.keyArn = key.arn;
    return key;
  }

  private keyArnHint(input: Record<string, unknown>, region: string): string | undefined {
    let key = typeof input.KeyId === 'string' ? this.lookupKey(input.KeyId) : undefined;
    if (!key && typeof input.CiphertextBlob === 'string') {
      const blob = parseBlob(Buffer.from(input.CiphertextBlob, 'base64'));
      key = blob && this.keys.get(blob.keyId);
    }
    return key && key.region === region ? key.arn : undefined;
  }

  private authorizeKms(caller: Caller, action: string, key: Key): void {
    const deny = (policy: 'identity' | 'resource') => new AwsError('AccessDeniedException',
      `User: ${callerArn(caller)} is not authorized to perform: ${action} on resource: ${key.arn} ` +
      `because no ${policy}-based policy allows the ${action} action`);
    if (caller.kind === 'user') {
      if (!this.baseCredentialsMayUseKms) throw deny('identity');
      return;
    }
    const { role } = caller.session;
    if (!role.allowedActions.some((p) => globMatch(p, action))) throw deny('identity');
    if (role.allowedKeyArns && !role.allowedKeyArns.some((p) => globMatch(p, key.arn))) throw deny('identity');
    if (key.keyPolicyAllows) {
      const principals = [role.arn, caller.session.arn];
      const allowed = key.keyPolicyAllows.some((p) =>
        p === `arn:aws:iam::${callerAccount(caller)}:root` || principals.some((arn) => globMatch(p, arn)));
      if (!allowed) throw deny('resource');
    }
  }

  private assertSymmetricUsable(key: Key): void {
    if (key.state === 'Disabled') throw new AwsError('DisabledException', `${key.arn} is disabled.`);
    if (key.state !== 'Enabled') {
      throw new AwsError('KMSInvalidStateException', `${key.arn} is ${describeState(key.state)}.`);
    }
    if (key.keySpec !== 'SYMMETRIC_DEFAULT') {
      throw new AwsError('InvalidKeyUsageException',
        `The operation failed because the KeySpec value of the KMS key is ${key.keySpec}. ` +
        'To perform this operation, the KeySpec value must be SYMMETRIC_DEFAULT.');
    }
    if (key.keyUsage !== 'ENCRYPT_DECRYPT') {
      throw new AwsError('InvalidKeyUsageException',
        `The operation failed because the KeyUsage value of the KMS key is ${key.keyUsage}. ` +
        'To perform this operation, the KeyUsage value must be ENCRYPT_DECRYPT.');
    }
  }

  // ----- STS -----------------------------------------------------------------------

  private stsCall(req: http.IncomingMessage, res: http.ServerResponse, action: string, params: URLSearchParams): ApiCall {
    return {
      ...this.callBase('sts', action, req, res),
      run: (call) => {
        switch (action) {
          case 'AssumeRole': return this.stsAssumeRole(call, params);
          case 'GetCallerIdentity': return this.stsGetCallerIdentity(call);
          default: throw new AwsError('InvalidAction', `Could not find operation ${action} for version ${params.get('Version')}`);
        }
      },
      send: (result) => sendXml(res, 200,
        `<${action}Response xmlns="${STS_XMLNS}">` +
        `<${action}Result>${toXml(result as XmlObject)}</${action}Result>` +
        `<ResponseMetadata><RequestId>${crypto.randomUUID()}</RequestId></ResponseMetadata>` +
        `</${action}Response>`),
      sendError: (err) => sendXml(res, err.status,
        `<ErrorResponse xmlns="${STS_XMLNS}">` +
        toXml({ Error: { Type: err.status >= 500 ? 'Receiver' : 'Sender', Code: err.code, Message: err.message } }) +
        `<RequestId>${crypto.randomUUID()}</RequestId></ErrorResponse>`),
    };
  }

  private stsGetCallerIdentity(call: ApiCall): XmlObject {
    const caller = this.authenticate(call);
    return caller.kind === 'user'
      ? { UserId: caller.user.userId, Account: caller.user.accountId, Arn: caller.user.arn }
      : { UserId: caller.session.assumedRoleId, Account: caller.session.role.accountId, Arn: caller.session.arn };
  }

  private stsAssumeRole(call: ApiCall, params: URLSearchParams): XmlObject {
    const caller = this.authenticate(call);
    const roleArn = params.get('RoleArn');
    const sessionName = params.get('RoleSessionName');
    if (!roleArn || roleArn.length < 20) {
      throw new AwsError('ValidationError', "1 validation error detected: Value at 'roleArn' failed to satisfy constraint: Member must have length greater than or equal to 20");
    }
    if (!sessionName || !/^[\w+=,.@-]{2,64}$/.test(sessionName)) {
      throw new AwsError('ValidationError', `1 validation error detected: Value '${sessionName ?? 'null'}' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*`);
    }
    const durationParam = params.get('DurationSeconds');
    const requested = durationParam === null ? undefined : Number(durationParam);
    if (requested !== undefined && !(Number.isInteger(requested) && requested > 0)) {
      throw new AwsError('ValidationError', `Invalid DurationSeconds: ${durationParam}`);
    }

    const role = this.roles.get(roleArn);
    const externalId = params.get('ExternalId');
    if (!role || !this.trusts(role, caller) || (role.requireExternalId !== null && externalId !== role.requireExternalId)) {
      throw new AwsError('AccessDenied',
        `User: ${callerArn(caller)} is not authorized to perform: sts:AssumeRole on resource: ${roleArn}`, 403);
    }

    const seconds = Math.min(requested ?? this.sessionSeconds, this.sessionSeconds);
    const session: Session = {
      accessKeyId: 'ASIA' + randomId(16),
      secretAccessKey: randomSecret(),
      sessionToken: crypto.randomBytes(96).toString('base64'),
      role,
      arn: `arn:aws:sts::${role.accountId}:assumed-role/${role.name}/${sessionName}`,
      assumedRoleId: `${role.roleId}:${sessionName}`,
      expiresAt: Date.now() + seconds * 1000,
    };
    this.sessions.set(session.accessKeyId, session);
    return {
      Credentials: {
        AccessKeyId: session.accessKeyId,
        SecretAccessKey: session.secretAccessKey,
        SessionToken: session.sessionToken,
        Expiration: new Date(session.expiresAt).toISOString().replace(/\.\d{3}Z$/, 'Z'),
      },
      AssumedRoleUser: { AssumedRoleId: session.assumedRoleId, Arn: session.arn },
    };
  }

  private trusts(role: Role, caller: Caller): boolean {
    if (!role.trustedPrincipals) return caller.kind === 'user';
    const arns = caller.kind === 'user' ? [caller.user.arn] : [caller.session.arn, caller.session.role.arn];
    return role.trustedPrincipals.some((p) =>
      p === `arn:aws:iam::${callerAccount(caller)}:root` || arns.some((arn) => globMatch(p, arn)));
  }

  // ----- shared plumbing -------------------------------------------------------------

  /** The protocol-independent part of an ApiCall: who is calling, from which region, and its log entry. */
  private callBase(service: FakeService, operation: string, req: http.IncomingMessage, res: http.ServerResponse) {
    const scope = parseCredentialScope(header(req, 'authorization'));
    const attempt = /attempt=(\d+)/.exec(header(req, 'amz-sdk-request') ?? '');
    const log: RequestLogEntry = { service, operation, accessKeyId: scope?.accessKeyId ?? '' };
    if (attempt) log.attempt = Number(attempt[1]);
    return { service, operation, req, res, log, region: scope?.region ?? this.region };
  }

  private handleAdmin(req: http.IncomingMessage, res: http.ServerResponse, method: string, body: Buffer): void {
    try {
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      const a: any = body.length ? JSON.parse(body.toString('utf8')) : {};
      let result: unknown;
      switch (method) {
        case 'info':
          result = { endpoint: this.endpoint, region: this.region, accountId: this.accountId, baseCredentials: this.baseCredentials };
          break;
        case 'calls': result = this.calls; break;
        case 'requests': result = this.requests; break;
        case 'createKey': result = this.createKey(a); break;
        case 'setKeyState': this.setKeyState(a.keyId ?? a.keyIdOrArn ?? a.arn, a.state); break;
        case 'createAlias': this.createAlias(a.alias ?? a.aliasName, a.keyId ?? a.keyIdOrArn ?? a.arn); break;
        case 'createRole': this.createRole(a); break;
        case 'createCredentials': result = this.createCredentials(a.principalArn); break;
        case 'setOutage': this.setOutage(Boolean(a.on), { service: a.service, mode: a.mode }); break;
        case 'setThrottle': this.setThrottle(a.count, a.service); break;
        case 'setLatency': this.setLatency(a.ms, a.keyArn); break;
        case 'failAfter': this.failAfter(a.operation, a.successes, a.errorName); break;
        case 'clearFaults': this.clearFaults(); break;
        case 'resetCounters': this.resetCounters(); break;
        default:
          sendJson(res, 404, { error: `unknown admin method ${req.method} ${method}` });
          return;
      }
      sendJson(res, 200, result ?? { ok: true });
    } catch (e) {
      sendJson(res, 400, { error: e instanceof Error ? e.message : String(e) });
    }
  }
}

// ---------------------------------------------------------------------------
// Remote admin client (for a server running in another process)
// ---------------------------------------------------------------------------

/** Calls `POST <endpoint>/__admin/<method>` with a JSON body; resolves with the JSON answer. */
export function fakeAwsAdmin<T = unknown>(endpoint: string, method: string, args: object = {}): Promise<T> {
  const body = JSON.stringify(args);
  return new Promise((resolve, reject) => {
    const req = http.request(`${endpoint}${ADMIN_PREFIX}${method}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
    }, (res) => {
      readBody(res).then((buf) => {
        const parsed: unknown = buf.length ? JSON.parse(buf.toString('utf8')) : undefined;
        if (res.statusCode !== 200) {
          const msg = (parsed as { error?: string } | undefined)?.error ?? `HTTP ${res.statusCode}`;
          reject(new Error(`fake-aws admin ${method}: ${msg}`));
        } else {
          resolve(parsed as T);
        }
      }, reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

// ---------------------------------------------------------------------------
// Ciphertext blobs: version(1) | key uuid(16) | nonce(12) | tag(16) | ciphertext
// ---------------------------------------------------------------------------

interface SealedBlob {
  keyId: string;
  nonce: Buffer;
  tag: Buffer;
  ciphertext: Buffer;
}

function canonicalContext(context: Record<string, string>): Buffer {
  const sorted = Object.keys(context).sort().map((k) => [k, context[k]]);
  return Buffer.from(JSON.stringify(Object.fromEntries(sorted)), 'utf8');
}

function seal(key: Key, plaintext: Buffer, context: Record<string, string>): Buffer {
  const nonce = crypto.randomBytes(NONCE_BYTES);
  const cipher = crypto.createCipheriv('aes-256-gcm', key.material, nonce);
  cipher.setAAD(canonicalContext(context));
  const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  const uuid = Buffer.from(key.keyId.replace(/-/g, ''), 'hex');
  return Buffer.concat([Buffer.from([BLOB_VERSION]), uuid, nonce, cipher.getAuthTag(), ciphertext]);
}

function parseBlob(buf: Buffer): SealedBlob | undefined {
  const header = 1 + 16 + NONCE_BYTES + TAG_BYTES;
  if (buf.length <= header || buf[0] !== BLOB_VERSION) return undefined;
  const hex = buf.subarray(1, 17).toString('hex');
  return {
    keyId: `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`,
    nonce: buf.subarray(17, 17 + NONCE_BYTES),
    tag: buf.subarray(17 + NONCE_BYTES, header),
    ciphertext: buf.subarray(header),
  };
}

function open(key: Key, blob: SealedBlob, context: Record<string, string>): Buffer | undefined {
  try {
    const decipher = crypto.createDecipheriv('aes-256-gcm', key.material, blob.nonce);
    decipher.setAAD(canonicalContext(context));
    decipher.setAuthTag(blob.tag);
    return Buffer.concat([decipher.update(blob.ciphertext), decipher.final()]);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

function header(req: http.IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function readBody(stream: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
  });
}

function sendJson(res: http.ServerResponse, status: number, value: unknown, contentType = 'application/json'): void {
  send(res, status, JSON.stringify(value), contentType);
}

function sendXml(res: http.ServerResponse, status: number, xml: string): void {
  send(res, status, xml, 'text/xml');
}

function send(res: http.ServerResponse, status: number, body: string, contentType: string): void {
  res.statusCode = status;
  res.setHeader('content-type', contentType);
  res.setHeader('content-length', Buffer.byteLength(body));
  res.setHeader('x-amzn-RequestId', crypto.randomUUID());
  res.end(body);
}

type XmlObject = { [name: string]: string | XmlObject };

function toXml(obj: XmlObject): string {
  return Object.entries(obj)
    .map(([name, v]) => `<${name}>${typeof v === 'string' ? escapeXml(v) : toXml(v)}</${name}>`)
    .join('');
}

function escapeXml(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => `&${{ '<': 'lt', '>': 'gt', '&': 'amp', "'": 'apos', '"': 'quot' }[c]};`);
}

/** SigV4: `Credential=AKID/20240101/us-east-1/kms/aws4_request` (signature not verified). */
function parseCredentialScope(authorization: string | undefined): { accessKeyId: string; region: string } | undefined {
  const m = /Credential=([^/,\s]+)\/\d{8}\/([^/]+)\/([^/]+)\/aws4_request/.exec(authorization ?? '');
  return m ? { accessKeyId: m[1], region: m[2] } : undefined;
}

/** `*` matches anything (including `/` and `:`), `?` one character. */
function globMatch(pattern: string, value: string): boolean {
  if (!pattern.includes('*') && !pattern.includes('?')) return pattern === value;
  const re = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${re}$`).test(value);
}

function isStringRecord(v: unknown): v is Record<string, string> {
  return !!v && typeof v === 'object' && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string');
}

function encryptionContext(input: Record<string, unknown>): Record<string, string> {
  const ctx = input.EncryptionContext;
  if (ctx === undefined || ctx === null) return {};
  if (!isStringRecord(ctx)) throw new AwsError('ValidationException', 'EncryptionContext must be a map of strings to strings');
  return ctx;
}

function requiredString(input: Record<string, unknown>, name: string): string {
  const v = input[name];
  if (typeof v !== 'string' || v === '') {
    const member = name[0].toLowerCase() + name.slice(1);
    throw new AwsError('ValidationException',
      `1 validation error detected: Value null at '${member}' failed to satisfy constraint: Member must not be null`);
  }
  return v;
}

function requiredBlob(input: Record<string, unknown>, name: string): Buffer {
  return Buffer.from(requiredString(input, name), 'base64');
}

function assertKeyState(state: string): void {
  if (!KEY_STATES.includes(state)) throw new Error(`unknown key state ${state}; expected one of ${KEY_STATES.join(', ')}`);
}

function describeState(state: string): string {
  switch (state) {
    case 'PendingDeletion': return 'pending deletion';
    case 'PendingImport': return 'pending import';
    case 'PendingReplicaDeletion': return 'pending replica deletion';
    default: return state.toLowerCase();
  }
}

function defaultKeyUsage(keySpec: string): string {
  if (keySpec.startsWith('HMAC_')) return 'GENERATE_VERIFY_MAC';
  if (keySpec.startsWith('ECC_')) return 'SIGN_VERIFY';
  return 'ENCRYPT_DECRYPT';
}

function signingAlgorithms(keySpec: string): string[] {
  if (keySpec.startsWith('RSA_')) return ['RSASSA_PSS_SHA_256', 'RSASSA_PKCS1_V1_5_SHA_256'];
  if (keySpec.startsWith('ECC_')) return ['ECDSA_SHA_256'];
  return [];
}

const ID_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

function randomId(length: number): string {
  return Array.from(crypto.randomBytes(length), (b) => ID_ALPHABET[b % 32]).join('');
}

function randomSecret(): string {
  return crypto.randomBytes(30).toString('base64');
}
