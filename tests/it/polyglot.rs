//! keygate as callers in other languages see it, against the real binary: a Python
//! client on stubs generated from `proto/` with `grpc_tools.protoc`, grpcurl working
//! from reflection alone, and the Go, Java and Node.js clients of `clients/`, built and
//! run by `clients/run`. Python and grpcurl need python3 with the packages of
//! `tests/python/requirements.txt` (which .ci/run installs); the other clients need
//! what `clients/install-deps` installs. Without them these tests fail, they never
//! skip.
//!
//! Size: five client languages, each a short test, plus the check that docs/CLIENTS.md shows their code.

use std::{
    ffi::OsStr,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::{Value, json};

use crate::support::{self, Backend, TestDb};

const ADMIN_TOKEN: &str = "polyglot-admin-token";
const INSTALL_HINT: &str =
    "install the tests' tools with `python3 -m pip install -r tests/python/requirements.txt`";
const CLIENTS_HINT: &str = "install the clients' tools with `clients/install-deps`";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `keygate` binary serving on a fresh SQLite file.
struct Served {
    process: support::Process,
    addr: SocketAddr,
    db: TestDb,
}

impl Served {
    async fn start() -> Self {
        let db = TestDb::create(Backend::Sqlite).await;
        let served = support::spawn_process_on(&db, &["--admin-tokens", ADMIN_TOKEN]);
        Self {
            process: served.process,
            addr: served.addr,
            db,
        }
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
    run_hinted(program, args, envs, INSTALL_HINT)
}

/// Runs `program` from the repository root; a missing program fails the test with `hint`.
fn run_hinted(program: &str, args: &[&str], envs: &[(&str, &OsStr)], hint: &str) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .envs(envs.iter().copied());
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run `{program}` ({e}): {hint}"))
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

/// Generates the Python modules of `proto/keygate/v1` into `out` as docs/CLIENTS.md says.
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

/// Builds and runs the client of `clients/<lang>` with `clients/run` against a fresh
/// keygate, and asserts that every one of its checks passed: create a bot key, verify
/// it (valid, a missing scope, another origin), revoke it, verify it again.
async fn client_round_trip(lang: &str) {
    let build = TempDir::new(&format!("client-{lang}"));
    let served = Served::start().await;
    let addr = served.addr.to_string();
    let out = run_hinted(
        "clients/run",
        &[lang],
        &[
            ("KEYGATE_ADDR", OsStr::new(&addr)),
            ("KEYGATE_TOKEN", OsStr::new(ADMIN_TOKEN)),
            ("KEYGATE_CLIENT_BUILD_DIR", build.0.as_os_str()),
        ],
        CLIENTS_HINT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let log = served.stop().await;
    assert!(
        out.status.success(),
        "clients/run {lang} failed ({}; a missing tool means: {CLIENTS_HINT}):\n\
         --- stdout\n{stdout}\n--- stderr\n{stderr}\n--- keygate\n{log}",
        out.status
    );
    assert!(
        stdout
            .lines()
            .any(|l| l == format!("{lang} client: all checks passed")),
        "clients/run {lang} ended without its closing line:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // How long generation, compilation and the run took, for `--nocapture`.
    eprintln!("{}", stderr.lines().last().unwrap_or_default());
    assert_no_secret(&stdout);
    assert_no_secret(&stderr);
    assert_no_secret(&log);
}

/// clients/go/main.go on stubs that protoc-gen-go and protoc-gen-go-grpc generate from
/// `proto/`, built in GOPATH mode on Debian's gRPC-Go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_client_round_trips_a_key() {
    client_round_trip("go").await;
}

/// clients/java/KeygateClient.java on classes that protoc and grpc_java_plugin
/// generate from `proto/`, compiled with javac against Debian's grpc-java.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_client_round_trips_a_key() {
    client_round_trip("java").await;
}

/// clients/node/client.js on @grpc/grpc-js, loading `proto/` with @grpc/proto-loader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_round_trips_a_key() {
    client_round_trip("node").await;
}

/// The region of a client's source between `// README:begin <name>` and
/// `// README:end`, without the marker line's indentation; several regions of the
/// same name are joined with a blank line.
fn source_region(path: &str, name: &str) -> String {
    let source =
        std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let begin = format!("// README:begin {name}");
    let mut segments = Vec::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        if line.trim() != begin {
            continue;
        }
        let indent = &line[..line.len() - line.trim_start().len()];
        let mut segment = Vec::new();
        loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("{path}: `{begin}` without `// README:end`"));
            if line.trim() == "// README:end" {
                break;
            }
            assert!(
                line.trim().is_empty() || line.starts_with(indent),
                "{path}: a line of region {name} is indented less than its marker: {line:?}"
            );
            segment.push(line.get(indent.len()..).unwrap_or_default());
        }
        while segment.last().is_some_and(|l| l.trim().is_empty()) {
            segment.pop();
        }
        segments.push(segment.join("\n"));
    }
    assert!(!segments.is_empty(), "{path} has no region `{name}`");
    segments.join("\n\n")
}

/// The names of the README regions marked in a client's source.
fn source_region_names(path: &str) -> Vec<String> {
    let source =
        std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut names: Vec<String> = source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("// README:begin "))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Every Go, Java and Node.js snippet of docs/CLIENTS.md is a region of a compiled and
/// tested client: each such code block follows a `<!-- snippet: PATH NAME -->` line and
/// equals that region, and every region appears in the README. The import paths the
/// README gives are the ones the proto files' options produce.
#[test]
fn readme_snippets_are_the_tested_clients_code() {
    let readme =
        std::fs::read_to_string(repo().join("docs/CLIENTS.md")).expect("read docs/CLIENTS.md");
    let lines: Vec<&str> = readme.lines().collect();
    let mut used: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let Some(lang) = line.strip_prefix("```").filter(|l| !l.is_empty()) else {
            i += 1;
            continue;
        };
        let end = lines[i + 1..]
            .iter()
            .position(|l| *l == "```")
            .map(|n| i + 1 + n)
            .unwrap_or_else(|| panic!("docs/CLIENTS.md:{}: unclosed code block", i + 1));
        let body = lines[i + 1..end].join("\n");
        let marker = i
            .checked_sub(1)
            .and_then(|p| lines[p].strip_prefix("<!-- snippet: "))
            .and_then(|m| m.strip_suffix(" -->"));
        if let Some(marker) = marker {
            let (path, name) = marker
                .split_once(' ')
                .unwrap_or_else(|| panic!("docs/CLIENTS.md:{i}: `<!-- snippet: PATH NAME -->`"));
            let region = source_region(path, name);
            assert!(
                body == region,
                "docs/CLIENTS.md:{}: the {lang} block differs from region `{name}` of {path}; \
                 copy the region into the README:\n--- README\n{body}\n--- {path}\n{region}",
                i + 1
            );
            used.push((path.to_owned(), name.to_owned()));
        } else {
            assert!(
                !matches!(lang, "go" | "java" | "js"),
                "docs/CLIENTS.md:{}: a {lang} block that is not a `<!-- snippet: PATH NAME -->` \
                 of a tested client:\n{body}",
                i + 1
            );
        }
        i = end + 1;
    }
    for path in [
        "clients/go/main.go",
        "clients/java/KeygateClient.java",
        "clients/node/client.js",
    ] {
        for name in source_region_names(path) {
            assert!(
                used.contains(&(path.to_owned(), name.clone())),
                "region `{name}` of {path} is in no README snippet"
            );
        }
        assert!(
            used.iter().any(|(p, _)| p == path),
            "no README snippet of {path}"
        );
    }

    // clients/go imports the generated package by this path and clients/java imports
    // `dev.keygate.v1.*`: the options of every proto file must say so, as the README does.
    let go_path = "github.com/keygate/keygate/gen/go/keygate/v1";
    for option in [
        format!("option go_package = \"{go_path};keygatev1\";"),
        "option java_package = \"dev.keygate.v1\";".to_owned(),
        "option java_multiple_files = true;".to_owned(),
    ] {
        for file in ["api_key.proto", "key_admin.proto", "key_verify.proto"] {
            let proto = std::fs::read_to_string(repo().join("proto/keygate/v1").join(file))
                .expect("read proto");
            assert!(proto.contains(&option), "{file} has `{option}`");
        }
    }
    assert!(
        readme.contains(&format!("(`{go_path}`)")),
        "README names {go_path}"
    );
    assert!(
        readme.contains("`dev.keygate.v1`"),
        "README names dev.keygate.v1"
    );
    let go_main = std::fs::read_to_string(repo().join("clients/go/main.go")).expect("main.go");
    assert!(go_main.contains(&format!("keygatev1 \"{go_path}\"")));
}
