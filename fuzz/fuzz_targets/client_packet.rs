//! Fuzz target for what a client can put in front of the gateway: the messages inside renet
//! payloads (inputs) and the updates a client decodes. Neither may panic on any bytes.
//!
//! Run: cargo +nightly fuzz run client_packet

#![no_main]

use libfuzzer_sys::fuzz_target;
use shardmesh::net::wire::{self, ClientMsg, Update};

fuzz_target!(|data: &[u8]| {
    if let Ok(ClientMsg::Input { seq, action }) = wire::decode::<ClientMsg>(data) {
        // Whatever decodes must encode back to something that decodes the same.
        let again = wire::decode::<ClientMsg>(&wire::encode(&ClientMsg::Input { seq, action: action.clone() }));
        assert_eq!(again, Ok(ClientMsg::Input { seq, action }));
    }
    if let Ok(update) = wire::decode::<Update>(data) {
        for seen in &update.seen {
            let _ = seen.position_m();
        }
    }
});
