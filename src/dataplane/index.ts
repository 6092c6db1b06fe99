export { computeRoutes, instanceCap, sameAddress, type FunctionRoute, type HostRoute, type RouteAddress, type RouteInstance, type RouteTable } from './table.ts';
export type { DataPlane, DataPlaneKind, DataPlaneSinks, LocalInstanceSource, RouteSource } from './types.ts';
export { nodeDataPlane } from './node.ts';
export { findHaproxy, resolveDataPlane } from './detect.ts';
