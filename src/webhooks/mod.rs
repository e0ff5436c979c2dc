//! Events out: every `KeyEvent` POSTed to the configured endpoints as signed
//! JSON (docs/API.md and the README describe it). `payload` is the JSON, `delivery` the background task.

pub mod delivery;
pub mod payload;
