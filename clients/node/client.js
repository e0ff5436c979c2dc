// A Node.js client of keygate on @grpc/grpc-js, loading proto/keygate/v1 at run
// time with @grpc/proto-loader: it creates a bot key through KeyAdmin, verifies it
// (valid, missing scope, blocked hostname), revokes it and verifies it again. It
// exits 1 naming every check that failed. The regions between `README:begin` and
// `README:end` are the README's Node.js snippets (a test keeps them equal).
//
//     KEYGATE_ADDR=127.0.0.1:50051 KEYGATE_TOKEN=dev-token clients/run node
"use strict";

const assert = require("node:assert");
const path = require("node:path");

const ORIGIN = "https://app.acme.example";
// The address the key's presenter connected from, in the key's networks.
const CLIENT_IP = "10.1.2.3";
let failures = 0;

/** Records one expectation, printing it either way. */
function check(what, got, want) {
  try {
    assert.deepStrictEqual(got, want);
    console.log(`ok   ${what}: ${JSON.stringify(got)}`);
  } catch {
    failures += 1;
    console.log(`FAIL ${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}

function fail(message) {
  console.error(`node client: FAIL ${message}`);
  process.exit(1);
}

/** One unary call as a promise, with a 5 s deadline; an RPC error fails the program. */
function unary(client, method, request, metadata) {
  return new Promise((resolve) => {
    const args = metadata ? [request, metadata] : [request];
    client[method](...args, { deadline: Date.now() + 5000 }, (err, resp) => {
      if (err) fail(`${method}: ${err.code} ${err.details}`);
      resolve(resp);
    });
  });
}

async function main() {
  const addr = process.env.KEYGATE_ADDR;
  const token = process.env.KEYGATE_TOKEN;
  if (!addr || !token) {
    fail("set KEYGATE_ADDR (host:port) and KEYGATE_TOKEN (a KeyAdmin service token)");
  }
  const protoDir = process.env.KEYGATE_PROTO_DIR || path.join(__dirname, "..", "..", "proto");
  const userId = "node-admin";

  // README:begin verify
  const grpc = require("@grpc/grpc-js");
  const protoLoader = require("@grpc/proto-loader");

  const definition = protoLoader.loadSync(["keygate/v1/key_admin.proto", "keygate/v1/key_verify.proto"], {
    includeDirs: [protoDir], // the repository's proto/
    keepCase: true, // fields as in the proto: required_scopes, missing_scopes
    enums: String, // enum values by name: "VERIFY_CODE_VALID"
    longs: String,
    defaults: true,
  });
  const keygate = grpc.loadPackageDefinition(definition).keygate.v1;
  const verify = new keygate.KeyVerify(addr, grpc.credentials.createInsecure());
  // README:end

  // README:begin metadata
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${token}`);
  md.set("x-actor-id", userId);
  md.set("x-actor-role", "admin");
  const admin = new keygate.KeyAdmin(addr, grpc.credentials.createInsecure());
  // then: admin.CreateKey(request, md, { deadline: Date.now() + 5000 }, (err, resp) => …)
  // README:end

  const created = await unary(
    admin,
    "CreateKey",
    {
      organization_id: "acme",
      type: "KEY_TYPE_BOT",
      name: "node client",
      scopes: ["links:read", "links:write"],
      allowed_hostnames: ["*.acme.example"],
      allowed_networks: ["10.0.0.0/8", "2001:db8::/32"],
    },
    md,
  );
  const { key, secret } = created;
  console.log(`created key ${key.id} (${key.key_prefix}…${key.last_four})`);
  check("create type", key.type, "KEY_TYPE_BOT");
  check("create created_by", key.created_by, userId);
  check("create scopes", key.scopes, ["links:read", "links:write"]);
  check("create networks", key.allowed_networks, ["10.0.0.0/8", "2001:db8::/32"]);
  check("secret starts with key_prefix", secret.length > 40 && secret.startsWith(key.key_prefix), true);

  const ok = await unary(verify, "VerifyKey", {
    key: secret,
    required_scopes: ["links:read"],
    origin: ORIGIN,
    client_ip: CLIENT_IP,
  });
  check("verify code", ok.code, "VERIFY_CODE_VALID");
  check("verify valid", ok.valid, true);
  check("verify key id", ok.key.id, key.id);
  check("verify organization", ok.key.organization_id, "acme");

  const scope = await unary(verify, "VerifyKey", {
    key: secret,
    required_scopes: ["links:read", "billing:write"],
    origin: ORIGIN,
    client_ip: CLIENT_IP,
  });
  check("missing scope code", scope.code, "VERIFY_CODE_INSUFFICIENT_SCOPE");
  check("missing scope valid", scope.valid, false);
  check("missing scopes", scope.missing_scopes, ["billing:write"]);

  const host = await unary(verify, "VerifyKey", {
    key: secret,
    required_scopes: ["links:read"],
    origin: "https://evil.example",
    client_ip: CLIENT_IP,
  });
  check("other origin code", host.code, "VERIFY_CODE_HOSTNAME_BLOCKED");
  check("other origin valid", host.valid, false);

  const outside = await unary(verify, "VerifyKey", {
    key: secret,
    required_scopes: ["links:read"],
    origin: ORIGIN,
    client_ip: "192.0.2.1",
  });
  check("other network code", outside.code, "VERIFY_CODE_NETWORK_BLOCKED");

  check("httpStatus valid", await httpStatus(verify, secret, ORIGIN, CLIENT_IP), 200);
  check("httpStatus other origin", await httpStatus(verify, secret, "https://evil.example", CLIENT_IP), 403);
  check("httpStatus other network", await httpStatus(verify, secret, ORIGIN, "192.0.2.1"), 403);

  const revoked = await unary(admin, "RevokeKey", { organization_id: "acme", id: key.id }, md);
  check("revoke revoked", revoked.key.revoked, true);

  const after = await unary(verify, "VerifyKey", { key: secret });
  check("after revoke code", after.code, "VERIFY_CODE_REVOKED");
  check("after revoke valid", after.valid, false);
  check("httpStatus revoked", await httpStatus(verify, secret, ORIGIN, CLIENT_IP), 401);

  // Bad input: INVALID_ARGUMENT, with a google.rpc.Status (and its BadRequest) in the
  // grpc-status-details-bin trailer.
  const refused = await new Promise((resolve) => {
    const request = {
      organization_id: "acme",
      type: "KEY_TYPE_BOT",
      name: "too wide",
      scopes: ["links:read"],
      allowed_hostnames: ["*.com"],
    };
    admin.CreateKey(request, md, { deadline: Date.now() + 5000 }, (err) => resolve(err));
  });
  check("bad input code", refused && refused.code, grpc.status.INVALID_ARGUMENT);
  const details = refused ? refused.metadata.get("grpc-status-details-bin") : [];
  check("bad input details", details.length === 1 && Buffer.isBuffer(details[0]) && details[0].length > 0, true);
  check(
    "bad input details name the field",
    details.length === 1 && details[0].includes(Buffer.from("allowed_hostnames[0]")),
    true,
  );

  admin.close();
  verify.close();
  if (failures > 0) fail(`${failures} check(s) failed`);
  console.log("node client: all checks passed");
}

// README:begin verify
// clientIp: the address of the caller that presented the key, as your service
// saw it (the connection's peer, or what your trusted proxy says).
function httpStatus(verify, key, origin, clientIp) {
  const request = { key, required_scopes: ["links:read"], origin, client_ip: clientIp };
  return new Promise((resolve) => {
    verify.VerifyKey(request, { deadline: Date.now() + 1000 }, (err, resp) => {
      if (err) return resolve(503);
      switch (resp.code) {
        case "VERIFY_CODE_VALID":
          return resolve(200); // resp.key.organization_id is the tenant
        case "VERIFY_CODE_MISSING":
        case "VERIFY_CODE_MALFORMED":
        case "VERIFY_CODE_NOT_FOUND":
        case "VERIFY_CODE_REVOKED":
        case "VERIFY_CODE_EXPIRED":
          return resolve(401);
        case "VERIFY_CODE_ORGANIZATION_MISMATCH":
        case "VERIFY_CODE_HOSTNAME_BLOCKED":
        case "VERIFY_CODE_INSUFFICIENT_SCOPE":
        case "VERIFY_CODE_NETWORK_BLOCKED":
        case "VERIFY_CODE_PRINCIPAL_MISMATCH":
          return resolve(403); // resp.missing_scopes with INSUFFICIENT_SCOPE
        case "VERIFY_CODE_RATE_LIMITED":
        case "VERIFY_CODE_QUOTA_EXCEEDED":
          return resolve(429); // resp.retry_after says when to retry
        default:
          return resolve(500);
      }
    });
  });
}
// README:end

main().catch((e) => fail(e.stack || String(e)));
