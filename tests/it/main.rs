//! Integration tests: the real gRPC API on an ephemeral port, over a real SQLite
//! file and a real MariaDB/MySQL database, one of each per test.

mod admin;
mod bad_input;
mod binary;
mod cluster;
mod crash;
mod docs;
mod edge;
mod key_policy;
mod layers;
mod leaks;
mod lifecycle;
mod limits;
mod lookup;
mod metrics;
mod model;
mod nginx;
mod outage;
mod overload;
mod polyglot;
mod presenters;
mod private_db;
mod prometheus;
mod properties;
mod review;
mod rotation;
mod security;
mod soak;
mod store_load;
mod store_suite;
mod support;
mod tls;
mod usage_history;
mod usage_limits;
mod verify;
mod webhooks;
