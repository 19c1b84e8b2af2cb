/**
 * Standalone fake AWS (KMS + STS) server for other processes (CLI under test,
 * demo, chaos suite):
 *
 *   node dist/test/support/fake-aws-server.js [--port N] [--region R]
 *        [--session-seconds N] [--no-base-kms] [--keys N]
 *
 * Prints one JSON line on stdout once listening:
 *   {"endpoint":"http://127.0.0.1:PORT","accessKeyId":"AKIA...","secretAccessKey":"...",
 *    "region":"us-east-1","accountId":"111122223333","keyArns":[...]}
 * and runs until SIGTERM/SIGINT. Drive it through `POST <endpoint>/__admin/<method>`
 * (see `fakeAwsAdmin` in ./fake-aws).
 */
import { startFakeAws, type StartFakeAwsOptions } from './fake-aws';

function parseArgs(argv: string[]): StartFakeAwsOptions & { keys: number } {
  const opts: StartFakeAwsOptions & { keys: number } = { keys: 0 };
  const number = (flag: string, value: string | undefined): number => {
    const n = Number(value);
    if (value === undefined || !Number.isInteger(n) || n < 0) throw new Error(`${flag} needs a non-negative integer`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    switch (flag) {
      case '--port': opts.port = number(flag, argv[++i]); break;
      case '--region': opts.region = argv[++i]; break;
      case '--session-seconds': opts.sessionSeconds = number(flag, argv[++i]); break;
      case '--no-base-kms': opts.baseCredentialsMayUseKms = false; break;
      case '--keys': opts.keys = number(flag, argv[++i]); break;
      default: throw new Error(`unknown argument ${flag}`);
    }
  }
  return opts;
}

async function main(): Promise<void> {
  const { keys, ...opts } = parseArgs(process.argv.slice(2));
  const server = await startFakeAws(opts);
  const keyArns = Array.from({ length: keys }, () => server.createKey().arn);
  process.stdout.write(JSON.stringify({
    endpoint: server.endpoint,
    accessKeyId: server.baseCredentials.accessKeyId,
    secretAccessKey: server.baseCredentials.secretAccessKey,
    region: server.region,
    accountId: server.accountId,
    keyArns,
  }) + '\n');
  const shutdown = (): void => {
    server.stop().then(() => process.exit(0), () => process.exit(1));
  };
  process.once('SIGTERM', shutdown);
  process.once('SIGINT', shutdown);
}

main().catch((err: unknown) => {
  process.stderr.write(`fake-aws-server: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(2);
});
