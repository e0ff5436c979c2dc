//! Events out: every `KeyEvent` POSTed to the configured endpoints as signed
//! JSON (docs/API.md and the README describe it). The JSON is the domain's
//! (`crate::domain::json`, which the store also keeps as each event's key
//! snapshot); `delivery` is the background task.

pub mod delivery;
