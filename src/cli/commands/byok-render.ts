/** How the byok commands show a check and the three policies. */
import { ByokCheck, PolicySnippets } from '../../core/byok';
import { IOStreams } from '../io';

export function renderCheck(io: IOStreams, c: ByokCheck): string {
  const mark = c.status === 'pass' ? io.ok('✓') : c.status === 'fail' ? io.bad('✗') : c.status === 'warn' ? io.paint('33', '!') : io.paint('2', '-');
  const lines = [`${mark} ${c.title}: ${c.detail}`];
  if (c.fix && (c.status === 'fail' || c.status === 'warn')) lines.push(`    fix: ${c.fix}`);
  return lines.join('\n');
}

export function renderPolicy(p: PolicySnippets): string {
  const json = (o: object) => JSON.stringify(o, null, 2);
  return [
    `ExternalId of this installation: ${p.externalId}`,
    `Trusted principal: ${p.principal}${p.principalSource === 'caller' ? ' (you, from sts:GetCallerIdentity; pass --principal to name another)' : ''}`,
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
