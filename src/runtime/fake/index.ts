export { createFakeRuntime, type FakeBehavior, type FakeInstance, type FakeRuntime, type FakeRuntimeOptions } from './fake.ts';
