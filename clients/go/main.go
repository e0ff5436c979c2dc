// A Go client of keygate, built against stubs that clients/run generates from
// proto/keygate/v1: it creates a bot key through KeyAdmin, verifies it (valid,
// missing scope, blocked hostname), revokes it and verifies it again. It exits 1
// with a message naming the first check that failed. The regions between
// `README:begin` and `README:end` are the README's Go snippets (a test keeps them equal).
//
//	KEYGATE_ADDR=127.0.0.1:50051 KEYGATE_TOKEN=dev-token clients/run go
package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"reflect"
	"time"

	keygatev1 "github.com/keygate/keygate/gen/go/keygate/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const origin = "https://app.acme.example"

// The address the key's presenter connected from, in the key's networks.
const clientIP = "10.1.2.3"

var failures int

// check records one expectation, printing it either way.
func check(what string, got, want interface{}) {
	if reflect.DeepEqual(got, want) {
		fmt.Printf("ok   %s: %v\n", what, got)
		return
	}
	failures++
	fmt.Printf("FAIL %s: got %v, want %v\n", what, got, want)
}

// verifyKey calls VerifyKey and fails the program on an RPC error.
func verifyKey(ctx context.Context, verify keygatev1.KeyVerifyClient, req *keygatev1.VerifyKeyRequest) *keygatev1.VerifyKeyResponse {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := verify.VerifyKey(ctx, req)
	if err != nil {
		log.Fatalf("FAIL VerifyKey: %v", err)
	}
	return resp
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("go client: ")
	addr, token := os.Getenv("KEYGATE_ADDR"), os.Getenv("KEYGATE_TOKEN")
	if addr == "" || token == "" {
		log.Fatal("set KEYGATE_ADDR (host:port) and KEYGATE_TOKEN (a KeyAdmin service token)")
	}
	userID := "go-admin"
	bg := context.Background()

	// README:begin verify
	conn, err := grpc.Dial(addr, grpc.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	verify := keygatev1.NewKeyVerifyClient(conn)
	// README:end
	admin := keygatev1.NewKeyAdminClient(conn)

	ctx := bg
	// README:begin metadata
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token,
		"x-actor-id", userID, "x-actor-role", "admin") // google.golang.org/grpc/metadata
	// README:end
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()

	created, err := admin.CreateKey(ctx, &keygatev1.CreateKeyRequest{
		OrganizationId:   "acme",
		Type:             keygatev1.KeyType_KEY_TYPE_BOT,
		Name:             "go client",
		Scopes:           []string{"links:read", "links:write"},
		AllowedHostnames: []string{"*.acme.example"},
		AllowedNetworks:  []string{"10.0.0.0/8", "2001:db8::/32"},
	})
	if err != nil {
		log.Fatalf("FAIL CreateKey: %v", err)
	}
	key, secret := created.GetKey(), created.GetSecret()
	fmt.Printf("created key %s (%s…%s)\n", key.GetId(), key.GetKeyPrefix(), key.GetLastFour())
	check("create type", key.GetType(), keygatev1.KeyType_KEY_TYPE_BOT)
	check("create created_by", key.GetCreatedBy(), userID)
	check("create scopes", key.GetScopes(), []string{"links:read", "links:write"})
	check("create networks", key.GetAllowedNetworks(), []string{"10.0.0.0/8", "2001:db8::/32"})
	check("secret starts with key_prefix", len(secret) > 40 && secret[:len(key.GetKeyPrefix())] == key.GetKeyPrefix(), true)

	ok := verifyKey(bg, verify, &keygatev1.VerifyKeyRequest{
		Key: secret, RequiredScopes: []string{"links:read"}, Origin: origin, ClientIp: clientIP,
	})
	check("verify code", ok.GetCode(), keygatev1.VerifyCode_VERIFY_CODE_VALID)
	check("verify valid", ok.GetValid(), true)
	check("verify key id", ok.GetKey().GetId(), key.GetId())
	check("verify organization", ok.GetKey().GetOrganizationId(), "acme")

	scope := verifyKey(bg, verify, &keygatev1.VerifyKeyRequest{
		Key: secret, RequiredScopes: []string{"links:read", "billing:write"}, Origin: origin, ClientIp: clientIP,
	})
	check("missing scope code", scope.GetCode(), keygatev1.VerifyCode_VERIFY_CODE_INSUFFICIENT_SCOPE)
	check("missing scope valid", scope.GetValid(), false)
	check("missing scopes", scope.GetMissingScopes(), []string{"billing:write"})

	host := verifyKey(bg, verify, &keygatev1.VerifyKeyRequest{
		Key: secret, RequiredScopes: []string{"links:read"}, Origin: "https://evil.example", ClientIp: clientIP,
	})
	check("other origin code", host.GetCode(), keygatev1.VerifyCode_VERIFY_CODE_HOSTNAME_BLOCKED)
	check("other origin valid", host.GetValid(), false)

	outside := verifyKey(bg, verify, &keygatev1.VerifyKeyRequest{
		Key: secret, RequiredScopes: []string{"links:read"}, Origin: origin, ClientIp: "192.0.2.1",
	})
	check("other network code", outside.GetCode(), keygatev1.VerifyCode_VERIFY_CODE_NETWORK_BLOCKED)

	check("httpStatus valid", httpStatus(bg, verify, secret, origin, clientIP), http.StatusOK)
	check("httpStatus other origin", httpStatus(bg, verify, secret, "https://evil.example", clientIP), http.StatusForbidden)
	check("httpStatus other network", httpStatus(bg, verify, secret, origin, "192.0.2.1"), http.StatusForbidden)

	revoked, err := admin.RevokeKey(ctx, &keygatev1.RevokeKeyRequest{OrganizationId: "acme", Id: key.GetId()})
	if err != nil {
		log.Fatalf("FAIL RevokeKey: %v", err)
	}
	check("revoke revoked", revoked.GetKey().GetRevoked(), true)

	after := verifyKey(bg, verify, &keygatev1.VerifyKeyRequest{Key: secret})
	check("after revoke code", after.GetCode(), keygatev1.VerifyCode_VERIFY_CODE_REVOKED)
	check("after revoke valid", after.GetValid(), false)
	check("httpStatus revoked", httpStatus(bg, verify, secret, origin, clientIP), http.StatusUnauthorized)

	// Bad input: INVALID_ARGUMENT with a google.rpc.BadRequest naming the field.
	_, err = admin.CreateKey(ctx, &keygatev1.CreateKeyRequest{
		OrganizationId: "acme", Type: keygatev1.KeyType_KEY_TYPE_BOT, Name: "too wide",
		Scopes: []string{"links:read"}, AllowedHostnames: []string{"*.com"},
	})
	st, _ := status.FromError(err)
	check("bad input code", st.Code(), codes.InvalidArgument)
	var fields []string
	for _, detail := range st.Details() {
		if bad, ok := detail.(*errdetails.BadRequest); ok {
			for _, violation := range bad.GetFieldViolations() {
				fields = append(fields, violation.GetField())
			}
		}
	}
	check("bad input fields", fields, []string{"allowed_hostnames[0]"})

	if failures > 0 {
		log.Fatalf("%d check(s) failed", failures)
	}
	fmt.Println("go client: all checks passed")
}

// README:begin verify
// clientIP is the address of the caller that presented the key, as your
// service saw it (the connection's peer, or what your trusted proxy says).
func httpStatus(ctx context.Context, verify keygatev1.KeyVerifyClient, key, origin, clientIP string) int {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := verify.VerifyKey(ctx, &keygatev1.VerifyKeyRequest{
		Key: key, RequiredScopes: []string{"links:read"}, Origin: origin, ClientIp: clientIP,
	})
	switch code := resp.GetCode(); {
	case err != nil:
		return http.StatusServiceUnavailable
	case code == keygatev1.VerifyCode_VERIFY_CODE_VALID:
		return http.StatusOK // resp.GetKey().GetOrganizationId() is the tenant
	case code >= 2 && code <= 6:
		return http.StatusUnauthorized
	case code >= 7 && code <= 9, code == 12, code == 13:
		return http.StatusForbidden // resp.GetMissingScopes() with INSUFFICIENT_SCOPE
	case code == 10 || code == 11:
		return http.StatusTooManyRequests // resp.GetRetryAfter() says when to retry
	default:
		return http.StatusInternalServerError
	}
}

// README:end
