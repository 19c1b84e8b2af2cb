/** What every command gets: parsed global options, streams, a lazily opened pool, a stop signal. */
import { Command } from 'commander';
import { Pool } from 'pg';
import { createPool, resolveConnectionConfig } from '../db/connection';
import { resolveBackupDir } from '../core/backup';
import { isLocalHost } from '../core/headroom';
import { processActor } from '../core/jobs';
import { IOStreams } from './io';

export interface GlobalOptions {
  databaseUrl?: string;
  json?: boolean;
  yes?: boolean;
  masterKeyFile?: string;
  quiet?: boolean;
  verbose?: boolean;
  color?: boolean;
  profile?: string;
}

export class CommandContext {
  readonly io: IOStreams;
  private poolInstance: Pool | undefined;
  private readonly abort = new AbortController();
  private interruptible = false;

  constructor(
    readonly command: string,
    readonly globals: GlobalOptions,
  ) {
    // --profile acts as AWS_PROFILE for this process, so the SDK takes credentials, endpoint_url
    // and retry settings from that one profile (a client's own `profile` option covers only credentials).
    if (globals.profile) process.env.AWS_PROFILE = globals.profile;
    this.io = new IOStreams({
      json: globals.json,
      quiet: globals.quiet,
      verbose: globals.verbose,
      color: globals.color,
      yes: globals.yes,
    });
  }

  /** The pool, opened on first use with application_name alation-keys/<command>. */
  get pool(): Pool {
    if (!this.poolInstance) {
      this.poolInstance = createPool({ databaseUrl: this.globals.databaseUrl, command: this.command, max: 6 });
    }
    return this.poolInstance;
  }

  /** Whether the server is on this host, so its data directory can be looked at. */
  get serverIsLocal(): boolean {
    const cfg = resolveConnectionConfig({ databaseUrl: this.globals.databaseUrl, command: this.command });
    let host = cfg.host ?? process.env.PGHOST;
    if (cfg.connectionString) {
      try {
        const u = new URL(cfg.connectionString);
        host = u.hostname ? decodeURIComponent(u.hostname) : (u.searchParams.get('host') ?? process.env.PGHOST);
      } catch {
        /* validated earlier */
      }
    }
    return isLocalHost(host?.replace(/^\[|\]$/g, ''));
  }

  /** The process environment: read here, at the edge, and handed to core explicitly. */
  get env(): NodeJS.ProcessEnv {
    return process.env;
  }

  /** Who runs this command, for job records (with the sudo caller, when there is one). */
  get actor(): string {
    return processActor(process.env.SUDO_USER);
  }

  /** The backup directory: the flag, else $ALATION_KEYS_BACKUP_DIR, else the default. */
  backupDir(flag: string | undefined): string {
    return resolveBackupDir(flag, process.env);
  }

  get providerOptions() {
    return { masterKeyFile: this.globals.masterKeyFile, awsProfile: this.globals.profile };
  }

  /** The command checkpoints on SIGINT/SIGTERM instead of exiting at once. */
  handleInterrupts(): AbortSignal {
    this.interruptible = true;
    return this.abort.signal;
  }

  get signal(): AbortSignal {
    return this.abort.signal;
  }

  /** Called by main's signal handler; returns false when the process should exit now. */
  interrupt(): boolean {
    if (!this.interruptible || this.abort.signal.aborted) return false;
    this.abort.abort();
    return true;
  }

  async close(): Promise<void> {
    const pool = this.poolInstance;
    this.poolInstance = undefined;
    if (pool) await pool.end().catch(() => undefined);
  }
}

/**
 * A command's action: its positional arguments and its flags as commander parsed them, typed by
 * the command (`F`: an interface of the flags' camelCase names, strings or booleans, repeated
 * flags as string arrays). The action parses them once into the typed options of the core
 * function it calls.
 */
export type CommandAction<F extends object> = (ctx: CommandContext, args: string[], flags: F) => Promise<void>;

/** Set by main: runs an action with a context and cleans up after it. */
export type Runner = <F extends object = Record<never, never>>(name: string, cmd: Command, action: CommandAction<F>) => (...args: unknown[]) => Promise<void>;
