/**
 * Store key layout, in one place. Everything lives under /aether/.
 *
 *   /aether/functions/<fnId>                 FunctionRecord JSON
 *   /aether/function-names/<name>            fnId (uniqueness of names, written in the same txn)
 *   /aether/instances/<fnId>/<instanceId>    InstanceRecord JSON, attached to the agent's lease
 *   /aether/agents/<agentId>                 AgentRecord JSON, attached to the agent's lease
 *   /aether/coldstart/<fnId>                 cold-start claim (gateway id), attached to a short lease
 *   /aether/invocations/<fnId>/<invId>.<n>   JSON array of n InvocationRecords, the newest <invId> (ids sort by time; records.ts)
 *   /aether/leader/<role>                    leader claim for singleton loops, leased
 *   /aether/provision-results/<requestId>    outcome of a provision job (failure text + last log lines), short lease
 *   /aether/demand/<fnId>/<gatewayId>        a gateway's in-flight and starting counts (scale-up sees all gateways), leased
 *   /aether/assignments/<nodeId>             services assigned to a node (ServiceAssignment JSON), written by the deployer
 *   /aether/deploy/status                    the deployer's last outcome (revision, errors, unplaced, changes)
 *   /aether/deploy/trigger                   a verified webhook delivery (ref); the deployer watches it and runs
 *   /aether/service-status/<nodeId>/<svc>    what an agent reports about a service it runs, leased
 *   /aether/service-restarts/<svc>           a restart request (nonce); agents running the service restart it once per nonce
 *   /aether/gateways/<gatewayId>             a live gateway and its lease; demand counts only while it is there, leased
 */
export const KEYS = {
  functions: '/aether/functions/',
  function: (id: string): string => `/aether/functions/${id}`,
  functionName: (name: string): string => `/aether/function-names/${name}`,
  instances: '/aether/instances/',
  instancesOf: (fnId: string): string => `/aether/instances/${fnId}/`,
  instance: (fnId: string, instanceId: string): string => `/aether/instances/${fnId}/${instanceId}`,
  agents: '/aether/agents/',
  agent: (id: string): string => `/aether/agents/${id}`,
  coldStart: (fnId: string): string => `/aether/coldstart/${fnId}`,
  invocationsOf: (fnId: string): string => `/aether/invocations/${fnId}/`,
  invocation: (fnId: string, invId: string): string => `/aether/invocations/${fnId}/${invId}`,
  leader: (role: string): string => `/aether/leader/${role}`,
  provisionResults: '/aether/provision-results/',
  demands: '/aether/demand/',
  demand: (fnId: string, gatewayId: string): string => `/aether/demand/${fnId}/${gatewayId}`,
  provisionResult: (requestId: string): string => `/aether/provision-results/${requestId}`,
  assignments: '/aether/assignments/',
  assignment: (nodeId: string): string => `/aether/assignments/${nodeId}`,
  deployStatus: '/aether/deploy/status',
  deployTrigger: '/aether/deploy/trigger',
  serviceStatuses: '/aether/service-status/',
  serviceStatus: (nodeId: string, svc: string): string => `/aether/service-status/${nodeId}/${svc}`,
  serviceRestarts: '/aether/service-restarts/',
  serviceRestart: (svc: string): string => `/aether/service-restarts/${svc}`,
  gateways: '/aether/gateways/',
  gateway: (id: string): string => `/aether/gateways/${id}`,
} as const;

/** Blob key of a function's archive. */
export const codeBlobKey = (fnId: string, sha256: string): string => `functions/${fnId}/${sha256}.archive`;

/** Queue topic for provisioning `process` instances (kept as is, so queued jobs survive upgrades). */
export const PROVISION_TOPIC = 'provision';

/** One provisioning topic per sandbox kind: only agents offering the kind take from it. */
export function provisionTopic(sandbox: string): string {
  return sandbox === 'process' ? PROVISION_TOPIC : `${PROVISION_TOPIC}.${sandbox}`;
}
