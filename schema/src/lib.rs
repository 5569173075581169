//! tessera-schema: everything a client and a node must agree on.
//!
//! - [`limits`]: every bound of the protocol, in one place.
//! - [`frame`]: the sans-IO frame codec (length-prefixed, versioned, crc32c-checked).
//! - [`msg`]: the protocol's messages as plain Rust values.
//! - [`wire`]: flatbuffers encoding of those messages (schema in `fbs/tessera.fbs`).
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

pub use generated::tessera::wire as fb;
pub use msg::{Request, Response, Status};
