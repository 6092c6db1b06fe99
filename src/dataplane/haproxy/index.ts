export { startHaproxyDataPlane, type HaproxyDataPlane, type HaproxyOptions } from './driver.ts';
export { startAgentHop, type AgentHop, type AgentHopOptions } from './agent-hop.ts';
export { maxSampling } from './sampling.ts';
