//! The gateway's whole receive path, from a live session's own address: each input is a series
//! of datagrams sent raw from the connected client's socket, and of renet packets sent inside its
//! authenticated netcode session, to a real gateway on a loopback socket. The gateway must not
//! panic, the client must stay connected, and after raw datagrams (which anyone can spoof) its
//! next real input must be taken.
//!
//! Run: cargo +nightly fuzz run gateway_session (from the repository root, with cargo-fuzz
//! installed)

#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use shardmesh::net::harness::Session;

thread_local! {
    static SESSION: RefCell<Session> = RefCell::new(Session::connect(4).expect("a session on loopback"));
}

fuzz_target!(|data: &[u8]| {
    SESSION.with(|session| {
        let s = &mut *session.borrow_mut();
        let mut rest = data;
        let mut authenticated = false;
        // Each part: a mode byte (even: raw, odd: inside the session), a length byte, the bytes.
        while let [mode, len, tail @ ..] = rest {
            let len = (*len as usize * 8).min(tail.len());
            let (part, tail) = tail.split_at(len);
            if mode % 2 == 0 {
                s.send_raw(part);
            } else {
                s.send_payload(part);
                authenticated = true;
            }
            rest = tail;
        }
        s.poll();
        assert!(s.connected(), "the session was disconnected: {:?}", s.gateway.stats);
        if !authenticated {
            assert!(s.input_arrives(), "the session's input was not taken: {:?}", s.gateway.stats);
        }
    });
});
