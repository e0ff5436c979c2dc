//! What a proxy sends keygate (Envoy ext_authz, forward auth): the request path
//! through normalisation and the route policy, and the credential headers.
//! Never a panic; a normalised path is a fixed point (normalising its printed
//! form changes nothing, so a route cannot match one spelling and not the
//! other) and holds no `.`, `..`, empty or slash-bearing segment; the key
//! found is always a piece of the header it came from.
#![no_main]

use keygate::{
    api::edge::{CredentialHeader, credential},
    domain::routes::{NormalPath, RoutePolicy},};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static POLICY: LazyLock<RoutePolicy> = LazyLock::new(|| {
    RoutePolicy::parse(
        r#"
[[route]]
path = "/api/links"
methods = ["GET"]
scopes = ["links:read"]

[[route]]
path = "/api/links/*"
scopes = ["links:write"]

[[route]]
path = "/api/**"
methods = ["GET"]
scopes = []
"#,
    )
    .expect("a valid policy")
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let path = parts.next().unwrap_or_default();
    let authorization = parts.next();
    let api_key = parts.next();

    if let Ok(normal) = NormalPath::parse(path) {
        for s in normal.segments() {
            assert!(!s.is_empty() && s != "." && s != "..", "{path:?} -> {s:?}");
            assert!(!s.contains('/') && !s.contains('\\') && !s.contains('%'), "{s:?}");
        }
        let printed = normal.to_string();
        let again = NormalPath::parse(&printed).expect("a normalised path parses");
        assert_eq!(again, normal, "{path:?} -> {printed:?}");
        for method in ["GET", "POST"] {
            assert_eq!(
                POLICY.required_scopes(method, &normal),
                POLICY.required_scopes(method, &again)
            );
        }
    }

    let (key, from) = credential(authorization, api_key);
    match from {
        Some(CredentialHeader::Authorization) => {
            let header = authorization.expect("came from Authorization");
            assert!(header.trim_start().get(..6).is_some_and(|s| s.eq_ignore_ascii_case("bearer")));
            assert!(header.contains(key));
        }
        Some(CredentialHeader::ApiKey) => assert!(api_key.expect("came from X-Api-Key").contains(key)),
        None => assert!(key.is_empty()),
    }
});
