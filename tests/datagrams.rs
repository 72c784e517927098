//! The gateway's whole receive path under attack from a live session's own address: a real
//! gateway on a loopback socket, a client connected through netcode and renet, and datagrams of
//! every kind (named ones that used to panic renetcode or renet, then arbitrary ones) sent from
//! the client's address, plus arbitrary renet packets inside the client's authenticated session.
//! Nothing may panic, the client must stay connected, its next real input must be taken, and
//! each drop must be counted by why.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shardmesh::net::guard::{Refusal, REQUEST_BYTES};
use shardmesh::net::harness::Session;
use shardmesh::net::wire::INPUT_CHANNEL;

fn refused(session: &Session, why: Refusal) -> u64 {
    session.gateway.stats.refused.get(why)
}

/// Sends `datagram` from the session's address and checks the session is none the worse.
fn survives(session: &mut Session, what: &str, datagram: &[u8]) {
    session.send_raw(datagram);
    session.poll();
    assert!(session.connected(), "{what}: the session was disconnected");
    assert!(session.input_arrives(), "{what}: the session's next input was not taken");
}

#[test]
fn each_kind_of_datagram_from_a_clients_address_is_dropped_and_counted_and_the_client_stays() {
    let mut s = Session::connect(4).expect("a session on loopback");
    let cases: Vec<(&str, Vec<u8>, Refusal)> = vec![
        // A payload whose sequence is 9 bytes long: renetcode sliced an 8-byte buffer with it.
        ("sequence of 9 bytes", [vec![0x95], vec![0; 17]].concat(), Refusal::Sequence),
        ("sequence of 15 bytes", [vec![0xf5], vec![0xaa; 60]].concat(), Refusal::Sequence),
        // An 8-byte sequence leaving fewer than 16 bytes for the MAC: renetcode split below zero.
        ("no room for the MAC", [vec![0x85], vec![1; 17]].concat(), Refusal::WrongSize),
        // The top of the sequence range: renetcode's replay window added to it unchecked.
        ("sequence at the top", [vec![0x85], vec![0xff; 8], vec![0; 30]].concat(), Refusal::Sequence),
        ("kind 7", vec![0x07; 40], Refusal::UnknownKind),
        ("kind 15", vec![0x1f; 40], Refusal::UnknownKind),
        ("a challenge, sent to the server", [vec![0x02], vec![0; 324]].concat(), Refusal::WrongPeer),
        ("a denial, sent to the server", [vec![0x11, 3], vec![0; 16]].concat(), Refusal::WrongPeer),
        // A connection request from a connected address refreshed the client's time-out.
        ("a connection request", vec![0; REQUEST_BYTES], Refusal::WrongPeer),
        ("a keep-alive too long", [vec![0x14, 1], vec![0; 30]].concat(), Refusal::WrongSize),
        ("a disconnect too long", [vec![0x16, 1], vec![0; 20]].concat(), Refusal::WrongSize),
        ("too short", vec![0x15; 17], Refusal::Short),
        ("empty", vec![], Refusal::Short),
        ("larger than netcode allows", vec![0x15; 1401], Refusal::Oversized),
    ];
    for (what, datagram, why) in cases {
        let before = refused(&s, why) + s.gateway.stats.oversized_packets;
        survives(&mut s, what, &datagram);
        let after = refused(&s, why) + s.gateway.stats.oversized_packets;
        assert_eq!(after, before + 1, "{what}: counted as {why:?}: {:?}", s.gateway.stats);
    }
    // Well-formed but not the client's: junk payloads and keep-alives fail authentication.
    let bad = s.gateway.stats.bad_packets;
    survives(&mut s, "a junk payload", &[vec![0x15, 9], vec![0x33; 60]].concat());
    assert_eq!(s.gateway.stats.bad_packets, bad + 1);
    survives(&mut s, "a junk keep-alive", &[vec![0x14, 9], vec![0x33; 24]].concat());

    // Inside the session, authenticated: renet packets a client never sends, or cannot be read.
    let renet_cases: Vec<(&str, Vec<u8>, Refusal)> = vec![
        // An unreliable slice whose index is past its count: renet indexed with it unchecked.
        ("a slice past its count", vec![3, 1, INPUT_CHANNEL, 0, 9, 2, 1, 0], Refusal::RenetKind),
        ("a reliable slice", vec![2, 1, INPUT_CHANNEL, 0, 0, 1, 1, 0], Refusal::RenetKind),
        ("a reliable message", vec![0, 1, INPUT_CHANNEL, 0, 0], Refusal::RenetKind),
        ("a channel never opened", vec![1, 1, 7, 0, 0], Refusal::RenetKind),
        ("messages past the end", vec![1, 1, INPUT_CHANNEL, 0, 3, 5, 1], Refusal::RenetKind),
        ("an acknowledgement below zero", vec![4, 1, 2, 5, 0], Refusal::RenetKind),
        ("kind 9", vec![9, 1, 2, 3], Refusal::RenetKind),
    ];
    for (what, payload, why) in renet_cases {
        let before = refused(&s, why);
        s.send_payload(&payload);
        s.poll();
        assert!(s.connected(), "{what}: the session was disconnected");
        assert!(s.input_arrives(), "{what}: the session's next input was not taken");
        assert_eq!(refused(&s, why), before + 1, "{what}: counted as {why:?}: {:?}", s.gateway.stats);
    }
}

#[test]
fn a_flood_spoofed_from_a_clients_address_does_not_silence_it() {
    let mut s = Session::connect(4).expect("a session on loopback");
    // Far more than an address's share of a tick, of every kind a client may send.
    for i in 0..2_000u32 {
        let kind = [0x14u8, 0x15, 0x16][i as usize % 3];
        // The sizes each kind has, so that all of it reaches netcode or the address's share.
        let len = match kind {
            0x14 => 26,
            0x16 => 18,
            _ => 40,
        };
        let mut d = vec![kind, (i % 200) as u8 + 1];
        d.resize(len, i as u8);
        s.send_raw(&d);
    }
    // The client's own input, behind the flood in the socket's queue, is read in the same tick.
    let seq = s.send_input();
    let inputs = s.poll();
    assert!(inputs.iter().any(|i| i.1 == seq), "a spoofed flood starved the client's input: {:?}", s.gateway.stats);
    // All of it counted, but for the few keep-alives within the address's share, which netcode
    // answers alike whether they authenticate or not.
    assert!(s.gateway.stats.bad_packets + s.gateway.stats.flooded_packets >= 1_990, "{:?}", s.gateway.stats);
    assert!(s.connected(), "{:?}", s.gateway.stats);
}

/// Datagrams whose first byte is a netcode kind and sequence length more often than chance.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    (any::<u8>(), 0u8..9, prop::collection::vec(any::<u8>(), 0..1500)).prop_map(|(first, seq, mut rest)| {
        let first = if first < 200 { (seq << 4) | (first % 8) } else { first };
        rest.insert(0, first);
        rest
    })
}

/// renet packets whose first byte is a renet kind more often than chance.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    (0u8..8, prop::collection::vec(any::<u8>(), 0..1300)).prop_map(|(kind, mut rest)| {
        rest.insert(0, if kind < 5 { kind } else { kind * 31 });
        rest
    })
}

#[test]
fn arbitrary_datagrams_from_a_session_and_payloads_inside_it_never_stop_it() {
    let session = std::cell::RefCell::new(Session::connect(4).expect("a session on loopback"));
    let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
    let strategy = (prop::collection::vec(datagram(), 1..8), prop::collection::vec(payload(), 0..4));
    runner
        .run(&strategy, |(datagrams, payloads)| {
            let s = &mut *session.borrow_mut();
            for d in &datagrams {
                s.send_raw(d);
            }
            s.poll();
            prop_assert!(s.connected(), "after datagrams: {:?}", s.gateway.stats);
            prop_assert!(s.input_arrives(), "after datagrams: {:?}", s.gateway.stats);
            for p in &payloads {
                s.send_payload(p);
            }
            s.poll();
            prop_assert!(s.connected(), "after payloads: {:?}", s.gateway.stats);
            Ok(())
        })
        .unwrap();
    let stats = session.borrow().gateway.stats;
    assert!(stats.refused.total() > 256, "most random datagrams are refused before netcode: {stats:?}");
    assert!(stats.bad_packets > 0, "some pass the shape check and fail authentication: {stats:?}");
}
