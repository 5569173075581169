//! A member's Hello on the peer port, for the server's tests of that port (kept out of
//! `mod.rs`, which the load generator's tests share and which has no flatbuffers there).

/// A member's Hello frame on the peer port, as member `from_node` of `cluster_id` would send it.
pub fn hello_frame(cluster_id: u64, from_node: u32) -> Vec<u8> {
    use tessera_schema::peer_fb as pb;
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let args = pb::HelloArgs {
        cluster_id,
        from_node,
        vnodes: 64,
        ..pb::HelloArgs::default()
    };
    let hello = pb::Hello::create(&mut builder, &args);
    builder.finish(hello, None);
    let mut frame = Vec::new();
    tessera_schema::frame::encode_frame(&mut frame, 0x40, 0, builder.finished_data());
    frame
}
