/** `byok policy | test | onboard | offboard`: bring your own AWS KMS key. */
import { Command } from 'commander';
import { Runner } from '../context';
import type { ByokPolicyFlags, ByokTargetFlags } from './byok-run';

/** Loaded on demand: the implementation pulls in the AWS SDK, which other commands do not need. */
const impl = () => require('./byok-run') as typeof import('./byok-run');

export function register(program: Command, run: Runner): void {
  const byok = program.command('byok').description('bring your own AWS KMS key: policy snippets, validation, onboarding');

  const policy = byok
    .command('policy')
    .description('print the IAM permission policy, trust policy and key-policy statement for the role AlationBYOKRole')
    .option('--key-arn <arn>', 'the customer KMS key (arn:aws:kms:REGION:ACCOUNT:key/KEY-ID)')
    .option('--role-arn <arn>', 'the role (arn:aws:iam::ACCOUNT:role/[PATH/]AlationBYOKRole)')
    .option('--principal <arn>', 'who may assume the role (default: the caller from sts:GetCallerIdentity)');
  policy.action(run('byok', policy, (ctx, _args, opts: ByokPolicyFlags) => impl().policyCommand(ctx, opts)));

  const addTargetOptions = (cmd: Command) =>
    cmd
      .option('--region <region>', 'the AWS region of the key (e.g. us-east-1)')
      .option('--key-arn <arn>', 'the customer KMS key (arn:aws:kms:REGION:ACCOUNT:key/KEY-ID)')
      .option('--role-arn <arn>', 'the role (arn:aws:iam::ACCOUNT:role/[PATH/]AlationBYOKRole)')
      .option('--service-region <region>', 'the region the catalog runs in (warns when the key is elsewhere)');

  const test = addTargetOptions(byok.command('test').description('check the role, the key and KMS latency without changing anything'));
  test.action(run('byok', test, (ctx, _args, opts: ByokTargetFlags) => impl().testCommand(ctx, opts)));

  const onboard = addTargetOptions(
    byok.command('onboard').description('test, then re-wrap every data key with the KMS key and switch to aws-kms (irreversible)'),
  ).option('--replace', 'move an onboarded installation to another customer key');
  onboard.action(run('byok', onboard, (ctx, _args, opts: ByokTargetFlags) => impl().onboardCommand(ctx, opts)));

  const offboard = byok.command('offboard').description('go back to the local master key: refused once BYOK is onboarded');
  offboard.action(run('byok', offboard, (ctx) => impl().offboardCommand(ctx)));
}
