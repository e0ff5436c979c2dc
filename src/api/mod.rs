//! Transports: each authenticates its caller, parses the request into the
//! domain's terms, calls a service and translates the answer back. No rule of
//! the product lives here.

pub mod edge;
pub mod envoy;
pub mod grpc;
pub mod http;
