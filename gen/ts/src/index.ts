// @dayu/client: Dayu's gRPC contracts (dayu.v1) for TypeScript on Node.js.
//
// The messages and service descriptors are generated (hack/gen-ts.sh) into ../dayu/v1/*_pb.ts and
// re-exported here; createDayuTransport() opens a real gRPC (always HTTP/2) transport to one Dayu node,
// plaintext or mutual TLS, for Connect's createClient():
//
//   import { BackendService, createClient, createDayuTransport } from "@dayu/client";
//   const backend = createClient(BackendService, createDayuTransport("127.0.0.1:50051"));
//   const { pipelines } = await backend.listPipelines({ pageSize: 10 });
import { readFileSync } from "node:fs";
import type { Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

export * from "../dayu/v1/backend_pb.js";
export * from "../dayu/v1/controller_pb.js";
export * from "../dayu/v1/datasource_pb.js";
export * from "../dayu/v1/decision_pb.js";
export * from "../dayu/v1/distributor_pb.js";
export * from "../dayu/v1/generator_pb.js";
export * from "../dayu/v1/monitor_pb.js";
export * from "../dayu/v1/processor_pb.js";
export * from "../dayu/v1/resources_pb.js";
export * from "../dayu/v1/scheduler_pb.js";
export * from "../dayu/v1/task_pb.js";
export * from "../dayu/v1/types_pb.js";

export { Code, ConnectError, createClient } from "@connectrpc/connect";
export type { CallOptions, Client, Transport } from "@connectrpc/connect";
export { create, fromJson, toJson } from "@bufbuild/protobuf";

/** The name the mesh's server certificates are issued for (hack/make_certs.py). */
export const DAYU_MESH_SERVER_NAME = "dayu-mesh";

/** Mutual TLS: PEM files of the mesh's CA and of this client's certificate and key. */
export interface DayuTls {
  /** CA certificate (PEM file) that signed the servers' certificates. */
  ca: string;
  /** This client's certificate (PEM file). */
  cert: string;
  /** This client's private key (PEM file). */
  key: string;
  /** Name to verify the server's certificate against, sent as TLS SNI; default "dayu-mesh". */
  serverName?: string;
}

/**
 * A gRPC transport (HTTP/2, the protocol Dayu's grpcio servers speak) to one node at HOST:PORT:
 * plaintext without `tls`, mutual TLS with it.
 */
export function createDayuTransport(address: string, tls?: DayuTls): Transport {
  if (!tls) {
    return createGrpcTransport({ baseUrl: `http://${address}` });
  }
  return createGrpcTransport({
    baseUrl: `https://${address}`,
    nodeOptions: {
      ca: readFileSync(tls.ca),
      cert: readFileSync(tls.cert),
      key: readFileSync(tls.key),
      servername: tls.serverName ?? DAYU_MESH_SERVER_NAME,
    },
  });
}
