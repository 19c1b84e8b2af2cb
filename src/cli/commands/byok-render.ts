/** How the byok commands show a check and the three policies. */
import { ByokCheck, PolicySnippets } from '../../core/byok';
import { IOStreams } from '../io';

export function renderCheck(io: IOStreams, c: ByokCheck): string {
  const mark = c.status === 'pass' ? io.ok('✓') : c.status === 'fail' ? io.bad('✗') : c.status === 'warn' ? io.paint('33', '!') : io.paint('2', '-');
  const lines = [`${mark} ${c.title}: ${c.detail}`];
  if (c.fix && (c.status === 'fail' || c.status === 'warn')) lines.push(`    fix: ${c.fix}`);
  return lines.join('\n');
}

const PRINCIPAL_SOURCE: Record<PolicySnippets['principalSource'], string> = {
  flag: '',
  caller: ' (you, from sts:GetCallerIdentity; pass --principal to name another)',
  placeholder: ' (A PLACEHOLDER: replace it in the trust policy with the ARN of the IAM user or role that will run alation-keys, or run again with --principal ARN)',
};

/** The warning line of a policy printed with the placeholder principal. */
export function placeholderWarning(p: PolicySnippets): string | undefined {
  if (p.principalSource !== 'placeholder') return undefined;
  return `${p.principalProblem}; the trust policy names a placeholder principal, ${p.principal}: replace it before use, or run again with --principal ARN`;
}

export function renderPolicy(p: PolicySnippets): string {
  const json = (o: object) => JSON.stringify(o, null, 2);
  return [
    `ExternalId of this installation: ${p.externalId}`,
    `Trusted principal: ${p.principal}${PRINCIPAL_SOURCE[p.principalSource]}`,
    ...(p.principalNote ? [`Note: ${p.principalNote}`] : []),
    '',
    `1. Permission policy: attach it to the role ${p.roleArn}`,
    json(p.permissionPolicy),
    '',
    '2. Trust policy of the role',
    json(p.trustPolicy),
    '',
    `3. Key policy statement: add it to the Statement list of the key policy of ${p.keyArn}`,
    json(p.keyPolicyStatement),
  ].join('\n');
}
