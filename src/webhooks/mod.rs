//! Events out: every `KeyEvent` POSTed to the configured endpoints as signed
//! JSON (DESIGN §11). `payload` is the JSON, `delivery` the background task.

pub mod delivery;
pub mod payload;
