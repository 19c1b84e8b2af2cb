/** The guided `byok onboard` on a terminal when flags are missing. */
import { AlationKeysError, UsageError } from '../../errors';
import { byokPolicy, ByokFlags, PolicySnippets } from '../../core/byok';
import { parseKeyArn, parseRegion, parseRoleArn } from '../../kms/arn';
import { CommandContext } from '../context';
import { renderPolicy } from './byok-render';

/** Turns a parser's UsageError into an inquirer validation message. */
function validator(parse: (s: string) => unknown) {
  return (value: string): true | string => {
    try {
      parse(value);
      return true;
    } catch (err) {
      return err instanceof AlationKeysError ? err.message : String(err);
    }
  };
}

/** Asks for what the flags left out and shows the policies; returns the flags to onboard with, or null when the operator is not ready. */
export async function runWizard(ctx: CommandContext, flags: ByokFlags, opts: { replace: boolean }): Promise<ByokFlags | null> {
  const prompts = await import('@inquirer/prompts');
  ctx.io.print('Guided BYOK onboarding: the customer KMS key will wrap every data key of this installation.');
  const region =
    flags.region ??
    (await prompts.input({
      message: 'AWS region of the KMS key:',
      default: process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION,
      validate: validator((s) => parseRegion(s)),
    })).trim();
  const keyArn =
    flags.keyArn ??
    (await prompts.input({
      message: 'KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/KEY-ID, not an alias):',
      validate: validator((s) => {
        const k = parseKeyArn(s);
        if (k.region !== region) throw new UsageError(`the key ARN is in ${k.region}, not ${region}`);
      }),
    })).trim();
  const roleArn =
    flags.roleArn ??
    (await prompts.input({
      message: 'IAM role ARN (arn:aws:iam::ACCOUNT:role/AlationBYOKRole):',
      validate: validator((s) => parseRoleArn(s)),
    })).trim();

  let snippets: PolicySnippets = await byokPolicy(ctx.pool, { keyArn, roleArn }, ctx.providerOptions);
  if (snippets.principalSource === 'placeholder') {
    ctx.io.warn(`${snippets.principalProblem}`);
    const principal = (
      await prompts.input({ message: 'Principal allowed to assume the role (IAM ARN or account id):' })
    ).trim();
    snippets = await byokPolicy(ctx.pool, { keyArn, roleArn, principal }, ctx.providerOptions);
  }
  ctx.io.print('');
  ctx.io.print(renderPolicy(snippets));
  ctx.io.print('');
  const ready = await prompts.confirm({ message: 'Are the three policies in place? Test the set-up now?', default: true });
  if (!ready) {
    ctx.io.print(
      `nothing was changed; when the policies are in place run:\n  alation-keys byok onboard --region ${region} --key-arn ${keyArn} --role-arn ${roleArn}${opts.replace ? ' --replace' : ''}`,
    );
    return null;
  }
  return { region, keyArn, roleArn, serviceRegion: flags.serviceRegion };
}
