//! The verify path's runtime: everything a `VerifyKey` (or an Envoy `Check`, or
//! a forward-auth request) touches after its request is parsed and before the
//! domain's checks decide. It runs on every request the company serves, so it
//! reads memory, not the store, and it keeps these invariants:
//!
//! - **The caches are only ever a copy of the store** ([`cache`]). A store read
//!   takes a generation ticket before it starts; an invalidation bumps the
//!   generation, and a fill whose ticket is older is dropped, so a read that
//!   raced a revocation cannot put the revoked key back.
//! - **Every change reaches every instance** ([`invalidation`]). Each instance
//!   polls the event table past the last id it saw; ids skipped over (visible
//!   at commit, not at insert) are remembered as gaps and looked for again for
//!   30 s, so a slow transaction's event is not missed.
//! - **Forged keys cannot load the store** ([`filter`]). A well-formed key
//!   whose hash the Bloom filter rules out is NOT_FOUND at once, except for a
//!   bypass budget of a few store reads a second, which still finds a key
//!   created on another instance a moment ago.
//! - **Misses are coalesced, never delayed** ([`lookup`]): a miss is read at
//!   once when a read slot is free; only when all are busy do misses queue, and
//!   the next free slot reads them together.
//! - **A replica never weakens revocation** ([`replica`]): NOT_FOUND only after
//!   the primary agrees, and an instance's own writes are read from the primary
//!   until the replica holds them.
//! - **Usage is counted off the request path, exactly** ([`usage`]): atomics on
//!   the cache entry, flushed in batches that add up across instances.
//! - **Limits are spent per rotation chain and per identity, and leases never
//!   over-grant** ([`limiter`], [`shared_limits`], [`quota`], [`identities`]): rate-limit calls leased from
//!   Redis are charged when leased and given back when unspent; quota credits
//!   are leased from the store's row with a conditional update, so a crash can
//!   lose only its open leases' credits (erring towards refusing), never grant
//!   one twice.

pub mod cache;
pub mod filter;
pub mod identities;
pub mod invalidation;
pub mod limiter;
pub mod lookup;
pub mod quota;
pub mod replica;
pub mod shared_limits;
pub mod usage;
