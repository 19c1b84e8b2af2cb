/**
 * What the `byok` commands do (registered in ./byok.ts, which loads this module only when a
 * byok command runs, so that other commands do not load the AWS SDK).
 */
import { ProviderError, UsageError } from '../../errors';
import {
  applyOnboarding,
  ByokFlags,
  ByokTestReport,
  byokPolicy,
  ensureExternalId,
  missingByokFlags,
  parseByokTarget,
  planOnboarding,
  refuseOffboarding,
  runByokTest,
} from '../../core/byok';
import { readSettings } from '../../core/settings';
import { requireInitialised } from '../../db/migrations';
import { CommandContext } from '../context';
import { placeholderWarning, renderCheck, renderPolicy } from './byok-render';
import { runWizard } from './byok-wizard';
import { count } from '../../plural';

/** The flags of `byok policy` as commander gives them. */
export interface ByokPolicyFlags {
  keyArn?: string;
  roleArn?: string;
  principal?: string;
}

/** The flags of `byok test` and `byok onboard` as commander gives them. */
export interface ByokTargetFlags {
  region?: string;
  keyArn?: string;
  roleArn?: string;
  serviceRegion?: string;
  replace?: boolean;
}

function flagsOf(opts: ByokTargetFlags): ByokFlags {
  return { region: opts.region, keyArn: opts.keyArn, roleArn: opts.roleArn, serviceRegion: opts.serviceRegion };
}

/** Runs the pre-flight checks, printing each as it finishes (not in --json mode). */
async function preflight(ctx: CommandContext, flags: ByokFlags): Promise<ByokTestReport> {
  const target = parseByokTarget(flags);
  await requireInitialised(ctx.pool);
  const externalId = await ensureExternalId(ctx.pool);
  const settings = await readSettings(ctx.pool);
  return runByokTest(target, {
    externalId,
    installationId: settings.installation_id!,
    profile: ctx.providerOptions.awsProfile,
    onCheck: (c) => ctx.io.print(renderCheck(ctx.io, c)),
  });
}

function failTest(report: ByokTestReport): never {
  const failed = report.checks.filter((c) => c.status === 'fail');
  const what = failed.map((c) => c.title).join('; ');
  if (report.badInput) throw new UsageError(`the BYOK input is inconsistent: ${failed[0]?.detail ?? what}`, { reported: true });
  throw new ProviderError(`${count(failed.length, 'BYOK check')} failed: ${what}`, {
    hint: failed[0]?.fix ?? 'fix what the failed checks say, then run it again',
    reported: true,
  });
}

async function runOnboard(ctx: CommandContext, flags: ByokFlags, opts: { replace?: boolean }): Promise<void> {
  const target = parseByokTarget(flags);
  const plan = await planOnboarding(ctx.pool, target, { replace: opts.replace });
  if (plan.alreadyOnboarded) {
    if (ctx.globals.json) {
      return ctx.io.printJson({ ok: true, onboarded: true, changed: false, keyArn: target.key.arn, roleArn: target.role.arn, region: target.region });
    }
    ctx.io.print(`already onboarded to this key; nothing to do (${target.key.arn} through ${target.role.arn} in ${target.region})`);
    return;
  }
  ctx.io.info(`testing ${target.key.arn} through ${target.role.arn} before onboarding`);
  const report = await preflight(ctx, flags);
  if (!report.ok) {
    if (ctx.globals.json) ctx.io.printJson({ ok: false, onboarded: false, test: report });
    failTest(report);
  }
  ctx.io.print('');
  ctx.io.print(`${plan.replace ? 'Moving' : 'Onboarding'} installation ${plan.installationId} to AWS KMS key ${target.key.arn}:`);
  ctx.io.print(`  ${count(plan.dataKeys, 'data key')} will be re-wrapped with KMS Encrypt in one transaction (all or nothing).`);
  ctx.io.print(ctx.io.paint('1', 'This is irreversible:'));
  for (const s of plan.irreversible) ctx.io.print(`  - ${s}`);
  await ctx.io.confirm(`Onboard key ${target.key.keyId}?`, { typeToConfirm: target.key.keyId });
  const progress = ctx.io.progress('taking the maintenance lock');
  let result;
  try {
    result = await applyOnboarding(ctx.pool, plan, { ...ctx.providerOptions, actor: ctx.actor, onProgress: (t) => progress.update(t) });
  } catch (err) {
    progress.fail(`onboarding failed; keyring and settings are unchanged`);
    throw err;
  }
  progress.succeed(`re-wrapped ${count(result.rewrapped, 'data key')} under ${result.keyArn}`);
  if (ctx.globals.json) return ctx.io.printJson({ ok: true, onboarded: true, changed: true, test: report, result });
  ctx.io.print(`BYOK ${plan.replace ? 'moved to' : 'enabled with'} ${result.keyArn} (job ${result.jobId}); new data keys come from KMS GenerateDataKey.`);
  ctx.io.print('Check it any time with `alation-keys status`.');
}

export async function policyCommand(ctx: CommandContext, opts: ByokPolicyFlags): Promise<void> {
  const snippets = await byokPolicy(ctx.pool, { keyArn: opts.keyArn, roleArn: opts.roleArn, principal: opts.principal }, ctx.providerOptions);
  const warning = placeholderWarning(snippets);
  if (warning) ctx.io.warn(warning);
  if (ctx.globals.json) return ctx.io.printJson(snippets);
  ctx.io.print(renderPolicy(snippets));
}

export async function testCommand(ctx: CommandContext, opts: ByokTargetFlags): Promise<void> {
  const flags = flagsOf(opts);
  const missing = missingByokFlags(flags);
  if (missing.length) throw new UsageError(`byok test needs ${missing.join(', ')}`);
  const report = await preflight(ctx, flags);
  if (ctx.globals.json) ctx.io.printJson(report);
  if (!report.ok) failTest(report);
  ctx.io.print(`all checks passed: ${report.keyArn} is ready for \`alation-keys byok onboard\``);
}

export async function onboardCommand(ctx: CommandContext, opts: ByokTargetFlags): Promise<void> {
  const flags = flagsOf(opts);
  const missing = missingByokFlags(flags);
  if (missing.length) {
    if (!ctx.io.canPrompt) {
      throw new UsageError(`byok onboard needs ${missing.join(', ')}`, { hint: 'pass them, or run it on a terminal for the guided set-up' });
    }
    const chosen = await runWizard(ctx, flags, { replace: !!opts.replace });
    if (chosen) await runOnboard(ctx, chosen, { replace: !!opts.replace });
    return;
  }
  await runOnboard(ctx, flags, { replace: !!opts.replace });
}

export async function offboardCommand(ctx: CommandContext): Promise<void> {
  const r = await refuseOffboarding(ctx.pool);
  if (ctx.globals.json) return ctx.io.printJson({ ok: true, provider: r.provider, changed: false });
  ctx.io.print(`this installation uses the ${r.provider} master key; nothing to do`);
}
