import { ApplicationFailure } from '@temporalio/activity';
import { makeS3Client } from '../../activities/s3-client';
import { configFromStack } from '../../deploy/local/stack';
import { stack } from './stack';

/** A client of the test stack's object store for the length of `fn`, with the stack's bucket. */
export async function withS3<T>(fn: (s3: ReturnType<typeof makeS3Client>, bucket: string) => Promise<T>): Promise<T> {
  const cfg = configFromStack(stack()).s3;
  const s3 = makeS3Client(cfg);
  try {
    return await fn(s3, cfg.bucket);
  } finally {
    s3.destroy();
  }
}

/** The ApplicationFailure `p` rejects with (the test fails if it resolves or rejects with anything else). */
export async function failure(p: Promise<unknown>): Promise<ApplicationFailure> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(ApplicationFailure);
  return e as ApplicationFailure;
}
