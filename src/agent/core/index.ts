export { AgentCore, describeExit, type AgentCoreDeps, type Leftover, type WorkloadController } from './core.ts';
export { CoreInstance, type InstanceHooks } from './instance.ts';
export { CapacityLedger, type Capacity, type Charge } from './ledger.ts';
export { canTransition, transition, isServing, INSTANCE_STATES, TRANSITIONS, type InstanceState } from './state.ts';
