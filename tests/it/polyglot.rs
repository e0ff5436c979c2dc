//! keygate as callers in other languages see it, against the real binary: a Python
//! client on stubs generated from `proto/` with `grpc_tools.protoc`, and grpcurl
//! working from reflection alone. Both need python3 with the packages of
//! `tests/python/requirements.txt` (which .ci/run installs); without them these
//! tests fail, they never skip.

use std::{
    ffi::OsStr,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::{Value, json};

use crate::{
    binary::Process,
    support::{Backend, TestDb},
};

const ADMIN_TOKEN: &str = "polyglot-admin-token";
const INSTALL_HINT: &str =
    "install the tests' tools with `python3 -m pip install -r tests/python/requirements.txt`";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `keygate` binary serving on a fresh SQLite file.
struct Served {
    process: Process,
    addr: SocketAddr,
    db: TestDb,
}

impl Served {
    async fn start() -> Self {
        let db = TestDb::create(Backend::Sqlite).await;
        let mut process = Process::spawn(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--admin-tokens",
                ADMIN_TOKEN,
                "--log-format",
                "json",
                "--database-url",
                &db.url,
            ],
            &[],
        );
        let addr = process.wait_serving();
        Self { process, addr, db }
    }

    /// Stops keygate with SIGTERM, drops the database and returns keygate's log.
    async fn stop(mut self) -> String {
        let status = self.process.terminate();
        assert!(status.success(), "graceful exit: {status}");
        self.db.drop_db().await;
        self.process.output().join("\n")
    }
}

/// A directory of its own under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("keygate-{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `program` from the repository root; a missing program fails the test.
fn run(program: &str, args: &[&str], envs: &[(&str, &OsStr)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .envs(envs.iter().copied());
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run `{program}` ({e}): {INSTALL_HINT}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that no secret (`kg_live_` and more than the four displayed characters
/// of `key_prefix`) appears in `out`.
#[track_caller]
fn assert_no_secret(out: &str) {
    for (at, _) in out.match_indices("kg_live_") {
        let body = out[at + "kg_live_".len()..]
            .bytes()
            .take_while(u8::is_ascii_alphanumeric)
            .count();
        assert!(body <= 4, "a secret was printed:\n{out}");
    }
}

/// Generates the Python modules of `proto/keygate/v1` into `out` as the README says.
fn generate_python_stubs(out: &Path) {
    let mut protos: Vec<String> = std::fs::read_dir(repo().join("proto/keygate/v1"))
        .expect("read proto/keygate/v1")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".proto"))
        .map(|name| format!("proto/keygate/v1/{name}"))
        .collect();
    protos.sort();
    assert_eq!(protos.len(), 3, "{protos:?}");
    let out_flag = out.display().to_string();
    let python_out = format!("--python_out={out_flag}");
    let grpc_out = format!("--grpc_python_out={out_flag}");
    let mut args = vec!["-m", "grpc_tools.protoc", "-Iproto", &python_out, &grpc_out];
    args.extend(protos.iter().map(String::as_str));
    let gen_stubs = run("python3", &args, &[]);
    assert!(
        gen_stubs.status.success(),
        "grpc_tools.protoc failed ({INSTALL_HINT}):\n{}",
        text(&gen_stubs.stderr)
    );
    for module in [
        "key_admin_pb2_grpc.py",
        "key_verify_pb2_grpc.py",
        "api_key_pb2.py",
    ] {
        assert!(
            out.join("keygate/v1").join(module).is_file(),
            "{module} was generated"
        );
    }
}

/// Python stubs generated from `proto/` drive the whole key life cycle, and an
/// INVALID_ARGUMENT's `grpc-status-details-bin` decodes as a google.rpc.Status with
/// a BadRequest, as `tests/python/roundtrip.py` shows a Python caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_stubs_from_proto_round_trip_a_key() {
    let stubs = TempDir::new("python-stubs");
    generate_python_stubs(&stubs.0);
    let served = Served::start().await;

    let addr = served.addr.to_string();
    let out = run(
        "python3",
        &[
            "tests/python/roundtrip.py",
            "--addr",
            &addr,
            "--token",
            ADMIN_TOKEN,
        ],
        &[
            ("PYTHONPATH", stubs.0.as_os_str()),
            ("PYTHONDONTWRITEBYTECODE", OsStr::new("1")),
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "roundtrip.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_no_secret(&stdout);
    assert_no_secret(&stderr);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the summary is JSON ({e}):\n{stdout}"));

    let created = &summary["create"];
    assert_eq!(created["type"], "KEY_TYPE_BOT", "{summary}");
    assert_eq!(created["organization_id"], "acme");
    assert_eq!(created["created_by"], "py-admin");
    assert_eq!(created["scopes"], json!(["links:read", "links:write"]));
    let prefix = created["key_prefix"].as_str().expect("key_prefix");
    assert!(prefix.starts_with("kg_live_"), "{prefix}");
    let secret_len = created["secret_length"].as_u64().expect("secret_length");
    assert!(secret_len > 40, "secret length {secret_len}");
    let id = created["id"].as_str().expect("id");
    assert!(!id.is_empty());

    assert_eq!(summary["verify"]["code"], "VERIFY_CODE_VALID", "{summary}");
    assert_eq!(summary["verify"]["valid"], true);
    assert_eq!(summary["verify"]["key_id"], id);
    assert_eq!(summary["verify"]["type"], "KEY_TYPE_BOT");

    let denied = &summary["verify_missing_scope"];
    assert_eq!(
        denied["code"], "VERIFY_CODE_INSUFFICIENT_SCOPE",
        "{summary}"
    );
    assert_eq!(denied["valid"], false);
    assert_eq!(denied["missing_scopes"], json!(["billing:write"]));

    assert_eq!(summary["revoke"]["revoked"], true, "{summary}");
    let after = &summary["verify_after_revoke"];
    assert_eq!(after["code"], "VERIFY_CODE_REVOKED", "{summary}");
    assert_eq!(after["valid"], false);

    let bad = &summary["invalid_argument"];
    assert_eq!(bad["code"], "INVALID_ARGUMENT", "{summary}");
    assert_eq!(bad["trailer"], true, "grpc-status-details-bin is sent");
    assert_eq!(bad["status_code"], 3, "google.rpc.Code.INVALID_ARGUMENT");
    assert_eq!(bad["fields"], json!(["allowed_hostnames[0]"]));
    assert!(
        bad["descriptions"][0]
            .as_str()
            .is_some_and(|d| d.contains("public suffix")),
        "{summary}"
    );
    assert_eq!(summary["no_token"]["code"], "UNAUTHENTICATED", "{summary}");

    let log = served.stop().await;
    assert_no_secret(&log);
}

/// grpcurl with `-plaintext` and a fixed overall time limit; flags go before the address.
fn grpcurl(addr: SocketAddr, flags: &[&str], rest: &[&str]) -> Output {
    let addr = addr.to_string();
    let mut args = vec!["-plaintext", "-max-time", "30"];
    args.extend_from_slice(flags);
    args.push(&addr);
    args.extend_from_slice(rest);
    run("grpcurl", &args, &[])
}

/// Runs grpcurl, asserts it succeeded and returns its stdout.
#[track_caller]
fn grpcurl_ok(addr: SocketAddr, flags: &[&str], rest: &[&str]) -> String {
    let out = grpcurl(addr, flags, rest);
    assert!(
        out.status.success(),
        "grpcurl {flags:?} {rest:?} failed ({}):\n{}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs a grpcurl call with a JSON request and parses its JSON response.
#[track_caller]
fn grpcurl_json(addr: SocketAddr, headers: &[&str], body: &Value, method: &str) -> Value {
    let body = body.to_string();
    let mut flags: Vec<&str> = headers.iter().flat_map(|h| ["-H", *h]).collect();
    flags.extend(["-d", &body]);
    let stdout = grpcurl_ok(addr, &flags, &[method]);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{method} answered JSON ({e}):\n{stdout}"))
}

/// grpcurl needs no proto files: reflection lists and describes the services, and
/// a CreateKey / VerifyKey / RevokeKey round trip and the health check work with
/// JSON in and out, as the README's tour does it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_works_from_reflection_alone() {
    let served = Served::start().await;
    let addr = served.addr;

    let list = grpcurl_ok(addr, &[], &["list"]);
    let services: Vec<&str> = list.lines().map(str::trim).collect();
    for service in [
        "keygate.v1.KeyAdmin",
        "keygate.v1.KeyVerify",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(&service), "{service} in {services:?}");
    }

    let method = grpcurl_ok(addr, &[], &["describe", "keygate.v1.KeyVerify.VerifyKey"]);
    assert!(
        method.contains(
            "rpc VerifyKey ( .keygate.v1.VerifyKeyRequest ) returns ( .keygate.v1.VerifyKeyResponse )"
        ),
        "{method}"
    );
    let request = grpcurl_ok(addr, &[], &["describe", "keygate.v1.VerifyKeyRequest"]);
    assert!(
        request.contains("repeated string required_scopes = 2;"),
        "{request}"
    );

    let bearer = format!("authorization: Bearer {ADMIN_TOKEN}");
    let admin = [bearer.as_str(), "x-actor-id: alice", "x-actor-role: admin"];
    let created = grpcurl_json(
        addr,
        &admin,
        &json!({
            "organization_id": "acme",
            "type": "KEY_TYPE_BOT",
            "name": "deploy bot",
            "scopes": ["links:read", "links:write"],
            "allowed_hostnames": ["*.acme.example"],
        }),
        "keygate.v1.KeyAdmin/CreateKey",
    );
    let secret = created["secret"].as_str().expect("secret").to_owned();
    let key = &created["key"];
    let id = key["id"].as_str().expect("key id").to_owned();
    assert_eq!(key["type"], "KEY_TYPE_BOT", "{key}");
    assert_eq!(key["organizationId"], "acme");
    assert_eq!(key["createdBy"], "alice");
    assert_eq!(key["scopes"], json!(["links:read", "links:write"]));
    assert_eq!(key["allowedHostnames"], json!(["*.acme.example"]));
    assert!(secret.starts_with(key["keyPrefix"].as_str().expect("keyPrefix")));

    let verify = |scopes: &[&str]| {
        grpcurl_json(
            addr,
            &[],
            &json!({
                "key": secret,
                "required_scopes": scopes,
                "origin": "https://app.acme.example",
            }),
            "keygate.v1.KeyVerify/VerifyKey",
        )
    };
    let ok = verify(&["links:read"]);
    assert_eq!(ok["code"], "VERIFY_CODE_VALID", "{ok}");
    assert_eq!(ok["valid"], true);
    assert_eq!(ok["key"]["id"], id.as_str());
    let denied = verify(&["links:read", "billing:write"]);
    assert_eq!(denied["code"], "VERIFY_CODE_INSUFFICIENT_SCOPE", "{denied}");
    assert_eq!(denied["missingScopes"], json!(["billing:write"]));
    assert!(denied.get("valid").is_none(), "false is omitted: {denied}");

    // Bad input: grpcurl exits with 64 + the status code and prints the BadRequest.
    let refused = grpcurl(
        addr,
        &[
            "-H",
            &bearer,
            "-H",
            "x-actor-id: alice",
            "-H",
            "x-actor-role: admin",
            "-d",
            &json!({
                "organization_id": "acme",
                "type": "KEY_TYPE_BOT",
                "name": "too wide",
                "scopes": ["links:read"],
                "allowed_hostnames": ["*.com"],
            })
            .to_string(),
        ],
        &["keygate.v1.KeyAdmin/CreateKey"],
    );
    let refused_err = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(64 + 3), "{refused_err}");
    for says in [
        "Code: InvalidArgument",
        "google.rpc.BadRequest",
        "allowed_hostnames[0]",
    ] {
        assert!(refused_err.contains(says), "{says} in:\n{refused_err}");
    }

    let revoked = grpcurl_json(
        addr,
        &admin,
        &json!({ "organization_id": "acme", "id": id }),
        "keygate.v1.KeyAdmin/RevokeKey",
    );
    assert_eq!(revoked["key"]["revoked"], true, "{revoked}");
    let after = verify(&[]);
    assert_eq!(after["code"], "VERIFY_CODE_REVOKED", "{after}");

    let health = grpcurl_json(addr, &[], &json!({}), "grpc.health.v1.Health/Check");
    assert_eq!(health, json!({ "status": "SERVING" }));

    let log = served.stop().await;
    assert!(
        !log.contains(&secret),
        "the secret appears in keygate's log"
    );
}
