import { Command } from 'commander';
import { Runner } from '../context';
import * as init from './init';
import * as columns from './columns';
import * as status from './status';
import * as jobs from './jobs';
import * as keys from './keys';
import * as backup from './backup';
import * as rotate from './rotate';
import * as verify from './verify';
import * as encrypt from './encrypt';
import * as decrypt from './decrypt';
import * as byok from './byok';
import * as completion from './completion';

/** Every command, in the order `--help` lists them. */
export function registerCommands(program: Command, run: Runner): void {
  init.register(program, run);
  columns.register(program, run);
  status.register(program, run);
  jobs.register(program, run);
  keys.register(program, run);
  backup.register(program, run);
  rotate.register(program, run);
  verify.register(program, run);
  encrypt.register(program, run);
  decrypt.register(program, run);
  byok.register(program, run);
  completion.register(program, run);
}
