//! A key's metadata on both stores: through create, get, list, update (the
//! `metadata` mask path replaces the whole map) and every `VerifyKey` answer,
//! cached or not; bad entries named and refused without a change.

use std::collections::BTreeMap;

use keygate::proto::{CreateKeyRequest, UpdateKeyRequest, VerifyCode};
use prost_types::FieldMask;

use crate::{store_tests, support::*};

const ORG: &str = "acme";

fn meta(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

store_tests!(
    metadata_round_trips_and_comes_back_on_verify,
    bad_metadata_is_named_and_changes_nothing,
);

async fn metadata_round_trips_and_comes_back_on_verify(b: Backend) {
    let app = spawn_app(b).await;
    // Values are any text, empty included.
    let first = meta(&[
        ("customer_id", "cus_9f3"),
        ("plan", "pro"),
        ("region.note", "épée"),
        ("empty", ""),
    ]);
    let (key, secret) = app
        .create(admin(CreateKeyRequest {
            metadata: first.clone(),
            ..bot_key(ORG, "m", &["links:read"])
        }))
        .await;
    assert_eq!(key.metadata, first);
    assert_eq!(app.get(ORG, &key.id).await.metadata, first);
    assert_eq!(app.all_keys(ORG).await[0].metadata, first);
    // Twice: the first answer reads the store, the second the cache.
    for _ in 0..2 {
        let answer = app.verify(verify_req(&secret, &["links:read"])).await;
        assert_eq!(answer.code(), VerifyCode::Valid);
        assert_eq!(answer.key.expect("key").metadata, first);
    }
    // A denial that found the key carries it too.
    let denied = app.verify(verify_req(&secret, &["billing:write"])).await;
    assert_eq!(denied.key.expect("key").metadata, first);

    // The mask path replaces the whole map, at once.
    let second = meta(&[("plan", "enterprise"), ("seats", "40")]);
    let update = |m: BTreeMap<String, String>| UpdateKeyRequest {
        organization_id: ORG.into(),
        id: key.id.clone(),
        metadata: m,
        update_mask: Some(FieldMask {
            paths: vec!["metadata".into()],
        }),
        ..Default::default()
    };
    app.admin
        .clone()
        .update_key(admin(update(second.clone())))
        .await
        .expect("update");
    let answer = app.verify(verify_req(&secret, &[])).await;
    assert_eq!(answer.key.expect("key").metadata, second);
    // Another field's update leaves it alone; an empty map removes it.
    let rename = UpdateKeyRequest {
        name: "renamed".into(),
        update_mask: Some(FieldMask {
            paths: vec!["name".into()],
        }),
        ..update(BTreeMap::new())
    };
    app.admin
        .clone()
        .update_key(admin(rename))
        .await
        .expect("rename");
    assert_eq!(app.get(ORG, &key.id).await.metadata, second);
    app.admin
        .clone()
        .update_key(admin(update(BTreeMap::new())))
        .await
        .expect("clear");
    assert!(app.get(ORG, &key.id).await.metadata.is_empty());
    let answer = app.verify(verify_req(&secret, &[])).await;
    assert!(answer.key.expect("key").metadata.is_empty());
    app.stop().await;
}

async fn bad_metadata_is_named_and_changes_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let secret = keygate::domain::keys::Secret::generate(&Default::default());
    let pasted = format!("token {}", secret.expose());
    let many: BTreeMap<String, String> = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
    let big = meta(&[("notes", &"x".repeat(4096))]);
    for (m, field) in [
        (meta(&[("Plan", "pro")]), "metadata[…]"),
        (meta(&[("région", "eu")]), "metadata[…]"),
        (meta(&[("api_key", &pasted)]), "metadata[api_key]"),
        (many, "metadata"),
        (big, "metadata"),
    ] {
        let result = app
            .admin
            .clone()
            .create_key(admin(CreateKeyRequest {
                metadata: m,
                ..bot_key(ORG, "bad", &["links:read"])
            }))
            .await;
        let status = assert_code(result, tonic::Code::InvalidArgument);
        assert_eq!(bad_fields(&status), [field]);
        assert!(
            !status.message().contains(secret.expose()),
            "the secret is not echoed"
        );
    }
    assert!(app.all_keys(ORG).await.is_empty());
    app.stop().await;
}
