//! tessera-schema: everything a client and a node must agree on.
//!
//! - [`limits`]: every bound of the protocol, in one place.
//! - [`frame`]: the sans-IO frame codec (length-prefixed, versioned, crc32c-checked).
//! - [`msg`]: the protocol's messages as plain Rust values.
//! - [`wire`]: flatbuffers encoding of those messages (schema in `fbs/tessera.fbs`).
//! - [`peer_fb`]: the peer protocol's generated code (schema in `fbs/replication.fbs`).
//! - [`verify`]: the request verifier that maps every limit to its status code.
//! - [`placement`]: key -> vnode, and the vnode -> shard table.

pub mod frame;
pub mod limits;
pub mod msg;
pub mod placement;
pub mod verify;
pub mod wire;

#[allow(clippy::all, warnings, unsafe_code, rust_2018_idioms)]
#[rustfmt::skip]
mod generated {
    include!("generated/tessera_generated.rs");
}

#[allow(clippy::all, warnings, unsafe_code, rust_2018_idioms)]
#[rustfmt::skip]
mod generated_peer {
    include!("generated/replication_generated.rs");
}

pub use generated::tessera::wire as fb;
/// The peer protocol's flatbuffers (`fbs/replication.fbs`); the node encodes replication
/// messages with it.
pub use generated_peer::tessera::peer as peer_fb;
pub use msg::{Request, Response, Status};
