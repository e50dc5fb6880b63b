import { testLie } from '../../activities/node/test-lie';

describe('the test-only lying agent (KYBERNATE_TEST_LIE)', () => {
  test('unset: no lie', () => {
    expect(testLie({})).toBeNull();
    expect(testLie({ KYBERNATE_TEST_LIE: '' })).toBeNull();
  });
  test('refused outside test mode, so an agent so configured never starts', () => {
    expect(() => testLie({ KYBERNATE_TEST_LIE: 'restore' })).toThrow(/test-only .*KYBERNATE_TEST_MODE=1/);
    expect(() => testLie({ KYBERNATE_TEST_LIE: 'restore', KYBERNATE_TEST_MODE: 'yes' })).toThrow(
      /KYBERNATE_TEST_MODE=1/,
    );
  });
  test('in test mode: only the lies it knows', () => {
    expect(testLie({ KYBERNATE_TEST_LIE: 'restore', KYBERNATE_TEST_MODE: '1' })).toBe('restore');
    expect(() => testLie({ KYBERNATE_TEST_LIE: 'dump', KYBERNATE_TEST_MODE: '1' })).toThrow(
      /expected 'restore'.*'dump'/,
    );
  });
});
