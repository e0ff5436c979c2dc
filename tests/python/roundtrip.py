#!/usr/bin/env python3
"""A Python client of keygate, built on stubs generated from proto/ with grpc_tools.

Run by tests/it/polyglot.rs against the real binary:

    python3 -m grpc_tools.protoc -Iproto --python_out=GEN --grpc_python_out=GEN proto/keygate/v1/*.proto
    PYTHONPATH=GEN python3 tests/python/roundtrip.py --addr 127.0.0.1:50051 --token T

It creates a bot key, verifies it (valid, then with a scope it lacks), revokes it,
verifies it again, and checks that an INVALID_ARGUMENT carries a google.rpc.BadRequest
in its `grpc-status-details-bin` trailer. Each step is checked here; the summary, one
JSON object on stdout, is checked again by the Rust test. The key's secret is never
printed: only its length, display prefix and last four characters are.
"""

import argparse
import json
import sys

import grpc
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status

from keygate.v1 import (
    api_key_pb2,
    key_admin_pb2,
    key_admin_pb2_grpc,
    key_verify_pb2,
    key_verify_pb2_grpc,
)


class CheckFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


def code_name(code):
    return key_verify_pb2.VerifyCode.Name(code)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True, help="HOST:PORT of keygate")
    parser.add_argument("--token", required=True, help="a KeyAdmin service token")
    parser.add_argument("--org", default="acme")
    args = parser.parse_args()

    # Every KeyAdmin call: the service token, and on whose behalf the caller acts.
    admin_md = (
        ("authorization", f"Bearer {args.token}"),
        ("x-actor-id", "py-admin"),
        ("x-actor-role", "admin"),
    )
    summary = {}
    with grpc.insecure_channel(args.addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=15)
        admin = key_admin_pb2_grpc.KeyAdminStub(channel)
        verify = key_verify_pb2_grpc.KeyVerifyStub(channel)

        created = admin.CreateKey(
            key_admin_pb2.CreateKeyRequest(
                organization_id=args.org,
                type=api_key_pb2.KEY_TYPE_BOT,
                name="python bot",
                scopes=["links:write", "links:read"],
                allowed_hostnames=["*.acme.example"],
                allowed_networks=["10.0.0.0/8", "2001:db8::/32"],
            ),
            metadata=admin_md,
            timeout=10,
        )
        secret = created.secret
        key = created.key
        check(key.id, "CreateKey returned a key id")
        check(secret.startswith(key.key_prefix), "the secret starts with key_prefix")
        check(secret.endswith(key.last_four), "the secret ends with last_four")
        check(list(key.scopes) == ["links:read", "links:write"], f"scopes sorted: {list(key.scopes)}")
        summary["create"] = {
            "id": key.id,
            "organization_id": key.organization_id,
            "type": api_key_pb2.KeyType.Name(key.type),
            "scopes": list(key.scopes),
            "created_by": key.created_by,
            "key_prefix": key.key_prefix,
            "last_four": key.last_four,
            "secret_length": len(secret),
        }

        # client_ip: the address of the caller that presented the key, as the
        # service saw it (the connection's peer, or what a trusted proxy says).
        def verify_key(scopes, client_ip="10.1.2.3"):
            return verify.VerifyKey(
                key_verify_pb2.VerifyKeyRequest(
                    key=secret,
                    required_scopes=scopes,
                    origin="https://app.acme.example",
                    client_ip=client_ip,
                ),
                timeout=10,
            )

        outside = verify_key(["links:read"], client_ip="192.0.2.1")
        check(
            outside.code == key_verify_pb2.VERIFY_CODE_NETWORK_BLOCKED,
            f"outside the key's networks: {code_name(outside.code)}",
        )
        check(
            list(key.allowed_networks) == ["10.0.0.0/8", "2001:db8::/32"],
            f"networks: {list(key.allowed_networks)}",
        )

        ok = verify_key(["links:read"])
        check(ok.valid and ok.code == key_verify_pb2.VERIFY_CODE_VALID, f"valid: {code_name(ok.code)}")
        check(ok.key.id == key.id, "VerifyKey names the created key")
        summary["verify"] = {
            "valid": ok.valid,
            "code": code_name(ok.code),
            "key_id": ok.key.id,
            "type": api_key_pb2.KeyType.Name(ok.key.type),
        }

        denied = verify_key(["links:read", "billing:write"])
        check(not denied.valid, "a missing scope is not valid")
        check(denied.code == key_verify_pb2.VERIFY_CODE_INSUFFICIENT_SCOPE, code_name(denied.code))
        summary["verify_missing_scope"] = {
            "valid": denied.valid,
            "code": code_name(denied.code),
            "missing_scopes": list(denied.missing_scopes),
        }

        revoked = admin.RevokeKey(
            key_admin_pb2.RevokeKeyRequest(organization_id=args.org, id=key.id),
            metadata=admin_md,
            timeout=10,
        )
        check(revoked.key.revoked, "RevokeKey returns a revoked key")
        check(revoked.key.HasField("revoke_time"), "RevokeKey sets revoke_time")
        summary["revoke"] = {"revoked": revoked.key.revoked}

        after = verify_key([])
        check(after.code == key_verify_pb2.VERIFY_CODE_REVOKED, code_name(after.code))
        summary["verify_after_revoke"] = {"valid": after.valid, "code": code_name(after.code)}

        # Bad input: an RPC error whose trailer carries a google.rpc.Status with a
        # BadRequest naming the field.
        try:
            admin.CreateKey(
                key_admin_pb2.CreateKeyRequest(
                    organization_id=args.org,
                    type=api_key_pb2.KEY_TYPE_BOT,
                    name="too wide",
                    scopes=["links:read"],
                    allowed_hostnames=["*.com"],
                ),
                metadata=admin_md,
                timeout=10,
            )
        except grpc.RpcError as err:
            trailers = [k for k, _ in (err.trailing_metadata() or ())]
            status = rpc_status.from_call(err)
            check(status is not None, f"no grpc-status-details-bin trailer (trailers: {trailers})")
            check(status.code == code_pb2.INVALID_ARGUMENT, f"google.rpc.Status code {status.code}")
            violations = []
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    violations.extend(bad.field_violations)
            check(violations, "the status carries a BadRequest with field violations")
            summary["invalid_argument"] = {
                "code": err.code().name,
                "status_code": status.code,
                "trailer": "grpc-status-details-bin" in trailers,
                "fields": [v.field for v in violations],
                "descriptions": [v.description for v in violations],
            }
        else:
            raise CheckFailed("CreateKey with allowed_hostnames ['*.com'] succeeded")

        # No service token: refused before anything else.
        try:
            admin.ListKeys(key_admin_pb2.ListKeysRequest(organization_id=args.org), timeout=10)
        except grpc.RpcError as err:
            summary["no_token"] = {"code": err.code().name}
        else:
            raise CheckFailed("ListKeys without a service token succeeded")

    summary["grpcio"] = grpc.__version__
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (CheckFailed, grpc.RpcError) as err:
        # An RpcError's text is its status (code, message); it never holds the secret.
        print(f"roundtrip.py: FAILED: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(1)
