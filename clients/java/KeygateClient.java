// A Java client of keygate, compiled with the classes that clients/run generates
// from proto/keygate/v1: it creates a bot key through KeyAdmin, verifies it (valid,
// missing scope, blocked hostname), revokes it and verifies it again. It exits 1
// naming every check that failed. The regions between `README:begin` and
// `README:end` are the README's Java snippets (a test keeps them equal).
//
//     KEYGATE_ADDR=127.0.0.1:50051 KEYGATE_TOKEN=dev-token clients/run java

import dev.keygate.v1.ApiKey;
import dev.keygate.v1.CreateKeyRequest;
import dev.keygate.v1.CreateKeyResponse;
import dev.keygate.v1.KeyAdminGrpc;
import dev.keygate.v1.KeyType;
import dev.keygate.v1.KeyVerifyGrpc;
import dev.keygate.v1.RevokeKeyRequest;
import dev.keygate.v1.VerifyCode;
import dev.keygate.v1.VerifyKeyRequest;
import dev.keygate.v1.VerifyKeyResponse;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.MetadataUtils;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.TimeUnit;

public final class KeygateClient {
    private static final String ORIGIN = "https://app.acme.example";
    // The address the key's presenter connected from, in the key's networks.
    private static final String CLIENT_IP = "10.1.2.3";
    private static int failures = 0;

    /** Records one expectation, printing it either way. */
    private static void check(String what, Object got, Object want) {
        if (Objects.equals(got, want)) {
            System.out.println("ok   " + what + ": " + got);
        } else {
            failures++;
            System.out.println("FAIL " + what + ": got " + got + ", want " + want);
        }
    }

    private static void fail(String message) {
        System.err.println("java client: FAIL " + message);
        System.exit(1);
    }

    /** Calls VerifyKey and fails the program on an RPC error. */
    private static VerifyKeyResponse verifyKey(KeyVerifyGrpc.KeyVerifyBlockingStub verify, VerifyKeyRequest req) {
        try {
            return verify.withDeadlineAfter(5, TimeUnit.SECONDS).verifyKey(req);
        } catch (StatusRuntimeException e) {
            fail("VerifyKey: " + e.getStatus().getCode() + ": " + e.getStatus().getDescription());
            throw e;
        }
    }

    public static void main(String[] args) throws InterruptedException {
        String addr = System.getenv("KEYGATE_ADDR");
        String token = System.getenv("KEYGATE_TOKEN");
        if (addr == null || addr.isEmpty() || token == null || token.isEmpty()) {
            fail("set KEYGATE_ADDR (host:port) and KEYGATE_TOKEN (a KeyAdmin service token)");
        }
        String userId = "java-admin";

        // README:begin verify
        ManagedChannel channel = ManagedChannelBuilder.forTarget(addr).usePlaintext().build();
        KeyVerifyGrpc.KeyVerifyBlockingStub verify = KeyVerifyGrpc.newBlockingStub(channel);
        // README:end
        try {
            run(channel, verify, token, userId);
        } finally {
            channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
        }
        if (failures > 0) {
            fail(failures + " check(s) failed");
        }
        System.out.println("java client: all checks passed");
    }

    private static void run(ManagedChannel channel, KeyVerifyGrpc.KeyVerifyBlockingStub verify, String token,
            String userId) {
        // README:begin metadata
        Metadata md = new Metadata();
        md.put(Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER), "Bearer " + token);
        md.put(Metadata.Key.of("x-actor-id", Metadata.ASCII_STRING_MARSHALLER), userId);
        md.put(Metadata.Key.of("x-actor-role", Metadata.ASCII_STRING_MARSHALLER), "admin");
        KeyAdminGrpc.KeyAdminBlockingStub admin = KeyAdminGrpc.newBlockingStub(channel)
            .withInterceptors(MetadataUtils.newAttachHeadersInterceptor(md));
        // README:end

        CreateKeyResponse created;
        try {
            created = admin.withDeadlineAfter(5, TimeUnit.SECONDS).createKey(CreateKeyRequest.newBuilder()
                .setOrganizationId("acme")
                .setType(KeyType.KEY_TYPE_BOT)
                .setName("java client")
                .addScopes("links:read")
                .addScopes("links:write")
                .addAllowedHostnames("*.acme.example")
                .addAllowedNetworks("10.0.0.0/8")
                .addAllowedNetworks("2001:db8::/32")
                .build());
        } catch (StatusRuntimeException e) {
            fail("CreateKey: " + e.getStatus().getCode() + ": " + e.getStatus().getDescription());
            return;
        }
        ApiKey key = created.getKey();
        String secret = created.getSecret();
        System.out.println("created key " + key.getId() + " (" + key.getKeyPrefix() + "…" + key.getLastFour() + ")");
        check("create type", key.getType(), KeyType.KEY_TYPE_BOT);
        check("create created_by", key.getCreatedBy(), userId);
        check("create scopes", key.getScopesList(), List.of("links:read", "links:write"));
        check("create networks", key.getAllowedNetworksList(), List.of("10.0.0.0/8", "2001:db8::/32"));
        check("secret starts with key_prefix", secret.length() > 40 && secret.startsWith(key.getKeyPrefix()), true);

        VerifyKeyResponse ok = verifyKey(verify, VerifyKeyRequest.newBuilder()
            .setKey(secret).addRequiredScopes("links:read").setOrigin(ORIGIN).setClientIp(CLIENT_IP).build());
        check("verify code", ok.getCode(), VerifyCode.VERIFY_CODE_VALID);
        check("verify valid", ok.getValid(), true);
        check("verify key id", ok.getKey().getId(), key.getId());
        check("verify organization", ok.getKey().getOrganizationId(), "acme");

        VerifyKeyResponse scope = verifyKey(verify, VerifyKeyRequest.newBuilder()
            .setKey(secret).addRequiredScopes("links:read").addRequiredScopes("billing:write").setOrigin(ORIGIN)
            .setClientIp(CLIENT_IP).build());
        check("missing scope code", scope.getCode(), VerifyCode.VERIFY_CODE_INSUFFICIENT_SCOPE);
        check("missing scope valid", scope.getValid(), false);
        check("missing scopes", scope.getMissingScopesList(), List.of("billing:write"));

        VerifyKeyResponse host = verifyKey(verify, VerifyKeyRequest.newBuilder()
            .setKey(secret).addRequiredScopes("links:read").setOrigin("https://evil.example").setClientIp(CLIENT_IP)
            .build());
        check("other origin code", host.getCode(), VerifyCode.VERIFY_CODE_HOSTNAME_BLOCKED);
        check("other origin valid", host.getValid(), false);

        VerifyKeyResponse outside = verifyKey(verify, VerifyKeyRequest.newBuilder()
            .setKey(secret).addRequiredScopes("links:read").setOrigin(ORIGIN).setClientIp("192.0.2.1").build());
        check("other network code", outside.getCode(), VerifyCode.VERIFY_CODE_NETWORK_BLOCKED);

        check("httpStatus valid", httpStatus(verify, secret, ORIGIN, CLIENT_IP), 200);
        check("httpStatus other origin", httpStatus(verify, secret, "https://evil.example", CLIENT_IP), 403);
        check("httpStatus other network", httpStatus(verify, secret, ORIGIN, "192.0.2.1"), 403);

        try {
            ApiKey revoked = admin.withDeadlineAfter(5, TimeUnit.SECONDS).revokeKey(RevokeKeyRequest.newBuilder()
                .setOrganizationId("acme").setId(key.getId()).build()).getKey();
            check("revoke revoked", revoked.getRevoked(), true);
        } catch (StatusRuntimeException e) {
            fail("RevokeKey: " + e.getStatus().getCode() + ": " + e.getStatus().getDescription());
        }

        VerifyKeyResponse after = verifyKey(verify, VerifyKeyRequest.newBuilder().setKey(secret).build());
        check("after revoke code", after.getCode(), VerifyCode.VERIFY_CODE_REVOKED);
        check("after revoke valid", after.getValid(), false);
        check("httpStatus revoked", httpStatus(verify, secret, ORIGIN, CLIENT_IP), 401);
    }

    // README:begin verify
    // clientIp: the address of the caller that presented the key, as your service
    // saw it (the connection's peer, or what your trusted proxy says).
    static int httpStatus(KeyVerifyGrpc.KeyVerifyBlockingStub verify, String key, String origin, String clientIp) {
        VerifyKeyResponse resp;
        try {
            resp = verify.withDeadlineAfter(1, TimeUnit.SECONDS).verifyKey(VerifyKeyRequest.newBuilder()
                .setKey(key).addRequiredScopes("links:read").setOrigin(origin).setClientIp(clientIp).build());
        } catch (StatusRuntimeException e) {
            return 503;
        }
        int code = resp.getCodeValue();
        if (resp.getCode() == VerifyCode.VERIFY_CODE_VALID) return 200; // resp.getKey().getOrganizationId()
        if (code >= 2 && code <= 6) return 401;
        if ((code >= 7 && code <= 9) || code == 12 || code == 13) return 403; // resp.getMissingScopesList()
        if (code == 10 || code == 11) return 429; // resp.getRetryAfter() says when to retry
        return 500;
    }
    // README:end
}
