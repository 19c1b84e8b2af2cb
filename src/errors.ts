/**
 * Every error the tool raises on purpose. Core modules throw these; only
 * src/cli/main.ts turns them into exit codes (SPEC section 6).
 */
export const ExitCode = {
  ok: 0,
  failed: 1,
  usage: 2,
  precondition: 3,
  provider: 4,
  integrity: 5,
  interrupted: 130,
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

export abstract class AlationKeysError extends Error {
  abstract readonly exitCode: ExitCodeValue;
  /** What the operator should do about it, shown after the message. */
  readonly hint?: string;
  /** The command already printed its result (e.g. `status --check`): main adds no JSON error document. */
  readonly reported: boolean;
  constructor(message: string, options?: { hint?: string; cause?: unknown; reported?: boolean }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = new.target.name;
    this.hint = options?.hint;
    this.reported = options?.reported ?? false;
  }
}

/** An unexpected failure; nothing was lost. Exit 1. */
export class OperationError extends AlationKeysError {
  readonly exitCode = ExitCode.failed;
}
/** Bad usage or bad input: unknown option, malformed ARN, missing confirmation. Exit 2. */
export class UsageError extends AlationKeysError {
  readonly exitCode = ExitCode.usage;
}
/** A precondition is not met: headroom, backup age, lock held, not initialised. Exit 3. */
export class PreconditionError extends AlationKeysError {
  readonly exitCode = ExitCode.precondition;
}
/** The key provider refused or could not be reached (KMS, STS, master key file). Exit 4. */
export class ProviderError extends AlationKeysError {
  readonly exitCode = ExitCode.provider;
}
/** A value or key failed to decrypt or verify. Exit 5. */
export class IntegrityError extends AlationKeysError {
  readonly exitCode = ExitCode.integrity;
  constructor(
    message: string,
    readonly location?: { schema?: string; table?: string; column?: string; key?: unknown; version?: number },
    options?: { hint?: string; cause?: unknown; reported?: boolean },
  ) {
    super(message, options);
  }
}
/** Stopped by SIGINT/SIGTERM after a clean checkpoint; the job is resumable. Exit 130. */
export class InterruptedError extends AlationKeysError {
  readonly exitCode = ExitCode.interrupted;
}

/**
 * Turns errors from pg, the OS and Node into our typed errors with a one-line message.
 * Typed errors pass through unchanged.
 */
/** Where a DBA finds the CREATE ROLE / GRANT statements the tool needs. */
export const PRIVILEGES_DOC = 'README "Database privileges"';

/** What Ctrl-C at a prompt says; every prompt comes before its command changes anything. */
export const PROMPT_INTERRUPTED = 'interrupted at the prompt (Ctrl-C); nothing was changed';

export function normaliseError(err: unknown): AlationKeysError {
  if (err instanceof AlationKeysError) return err;
  // @inquirer/prompts reads the terminal in raw mode, so Ctrl-C at a prompt is a key, not a
  // SIGINT: it rejects with ExitPromptError ("User force closed the prompt with SIGINT").
  // It is an interruption like Ctrl-C anywhere else: exit 130, our one line.
  if ((err as Error | undefined)?.name === 'ExitPromptError') return new InterruptedError(PROMPT_INTERRUPTED, { cause: err });
  const e = err as { code?: string; message?: string; address?: string; port?: number; errno?: number };
  const code = e?.code;
  const message = e?.message ?? String(err);
  switch (code) {
    case 'ECONNREFUSED':
    case 'ENOTFOUND':
    case 'EHOSTUNREACH':
    case 'ETIMEDOUT':
      return new OperationError(`cannot connect to the database: ${message}`, {
        hint: 'check --database-url, ALATION_KEYS_DATABASE_URL or the PG* variables, and that PostgreSQL is running',
        cause: err,
      });
    case 'ENOENT':
      if (/\.s\.PGSQL\./.test(message)) {
        return new OperationError(`cannot connect to the database: no server socket (${message})`, { cause: err });
      }
      return new OperationError(message, { cause: err });
    case '3D000':
      return new PreconditionError(`${message}`, { hint: 'name an existing database in --database-url or PGDATABASE', cause: err });
    case '28P01':
    case '28000':
      // node-postgres takes the user from $PGUSER, else $USER; with neither (cron, `env -i`)
      // and none in the URL it sends no user name at all: name the missing setting.
      if (/no PostgreSQL user name specified/i.test(message)) {
        return new UsageError('no database user name: the database URL names none, and neither PGUSER nor USER is set', {
          hint: 'name the user in the URL (--database-url or ALATION_KEYS_DATABASE_URL: postgresql://USER@HOST/DATABASE) or set PGUSER',
          cause: err,
        });
      }
      return new OperationError(`the database refused the login: ${message}`, {
        hint: 'check the user, and put the password in PGPASSWORD or ~/.pgpass',
        cause: err,
      });
    case '42501': {
      // insufficient_privilege, whatever raised it: one clear exit 3 naming what PostgreSQL refused.
      const detail = (err as { detail?: string }).detail;
      const connect = /permission denied for database (\S+)/.exec(message);
      return new PreconditionError(
        connect ? `the database role lacks CONNECT on database ${connect[1]} (${message})` : `the database role lacks a privilege: ${message}${detail ? ` (${detail})` : ''}`,
        { hint: `a DBA grants it: ${PRIVILEGES_DOC} has the GRANT statements`, cause: err },
      );
    }
    case '57P01':
    case '57P02':
    case '57P03':
    case '08006':
    case '08003':
    case '08001':
      return new OperationError(`the database connection was lost (${message}); run the command again once it is back`, { cause: err });
    default:
      break;
  }
  if (/Connection terminated|connection.*closed|ECONNRESET/i.test(message)) {
    return new OperationError(`the database connection was lost (${message}); run the command again once it is back`, { cause: err });
  }
  return new OperationError(message, { cause: err });
}
