import { sharedListing } from '../../activities/control/registry';

/** A listing whose calls are counted and resolved (or failed) by hand. */
function fakeList() {
  const calls: { resolve: (v: number) => void; reject: (e: Error) => void }[] = [];
  const list = () => new Promise<number>((resolve, reject) => calls.push({ resolve, reject }));
  return { calls, list };
}

describe('sharedListing (the registries listing nodeStanding shares)', () => {
  test('callers while a listing runs share it; within the age its result is reused; past it, a new listing', async () => {
    let t = 0;
    const { calls, list } = fakeList();
    const get = sharedListing(list, 5000, () => t);
    const a = get();
    const b = get();
    expect(calls).toHaveLength(1);
    calls[0].resolve(1);
    await expect(Promise.all([a, b])).resolves.toEqual([1, 1]);
    t = 5000;
    await expect(get()).resolves.toBe(1);
    expect(calls).toHaveLength(1);
    t = 5001;
    const c = get();
    expect(calls).toHaveLength(2);
    calls[1].resolve(2);
    await expect(c).resolves.toBe(2);
  });

  test('a failed listing reaches its callers and is not kept: the next caller lists again', async () => {
    const { calls, list } = fakeList();
    const get = sharedListing(list, 5000, () => 0);
    const a = get();
    calls[0].reject(new Error('temporal unavailable'));
    await expect(a).rejects.toThrow('temporal unavailable');
    const b = get();
    expect(calls).toHaveLength(2);
    calls[1].resolve(3);
    await expect(b).resolves.toBe(3);
  });
});
