//! The shared-memory ring under a concurrent producer and consumer: order, wrap-around, a full
//! ring and backpressure, rkyv messages read in place, and corruption caught as an error.

use shardmesh::protocol::{Incarnation, ServerMsg, ToReplication};
use shardmesh::runtime::ring::{access, access_trusted, Ring, RingError};
use shardmesh::world::ServerId;

fn pattern(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8).collect()
}

#[test]
fn rkyv_messages_cross_and_are_read_in_place() {
    let (mut tx, mut rx) = Ring::anonymous(1 << 16).unwrap().split();
    let msgs: Vec<ToReplication> = (0..100)
        .map(|i| ToReplication {
            server: ServerId(i),
            incarnation: Incarnation(7),
            body: ServerMsg::Heartbeat { sent_at_us: i as u64 * 10 },
        })
        .collect();
    for m in &msgs {
        tx.try_push(m).unwrap();
    }
    tx.flush();
    let mut got = Vec::new();
    rx.read_batch(usize::MAX, |payload| {
        let checked = access::<shardmesh::protocol::messages::ArchivedToReplication>(payload).unwrap();
        // SAFETY: this test's producer wrote a `ToReplication` into this frame.
        let trusted = unsafe { access_trusted::<shardmesh::protocol::messages::ArchivedToReplication>(payload) };
        assert_eq!(checked.server.0, trusted.server.0);
        got.push(rkyv::deserialize::<ToReplication, rkyv::rancor::Error>(checked).unwrap());
    })
    .unwrap();
    assert_eq!(got, msgs);
}

#[test]
fn nothing_is_visible_before_flush() {
    let (mut tx, mut rx) = Ring::anonymous(4096).unwrap().split();
    tx.try_push_bytes(b"hello").unwrap();
    assert_eq!(rx.read_batch(10, |_| panic!("unpublished frame read")).unwrap(), 0);
    tx.flush();
    let mut n = 0;
    rx.read_batch(10, |p| {
        assert_eq!(p, b"hello");
        n += 1;
    })
    .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn a_full_ring_pushes_back_until_the_consumer_frees_space() {
    let (mut tx, mut rx) = Ring::anonymous(4096).unwrap().split();
    let mut pushed = 0u64;
    loop {
        match tx.try_push_bytes(&pattern(pushed, 100)) {
            Ok(()) => pushed += 1,
            Err(RingError::Full) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(pushed, 4096 / 128, "each 100-byte frame takes 128 bytes with its header");
    tx.flush();
    let mut seen = 0u64;
    rx.read_batch(4, |p| {
        assert_eq!(p, pattern(seen, 100));
        seen += 1;
    })
    .unwrap();
    tx.try_push_bytes(&pattern(pushed, 100)).expect("room after the consumer read");
    assert!(matches!(tx.try_push_bytes(&[0; 5000]), Err(RingError::TooLarge { .. })));
}

#[test]
fn wrap_around_and_order_under_a_concurrent_producer_and_consumer() {
    const COUNT: u64 = 200_000;
    let (mut tx, mut rx) = Ring::anonymous(8192).unwrap().split();
    let producer = std::thread::spawn(move || {
        let mut full = 0u64;
        for seq in 0..COUNT {
            // Sizes from 0 to 1,500 bytes, so frames land at every offset and wrap often.
            let len = (seq as usize * 7919) % 1501;
            let bytes = pattern(seq, len);
            loop {
                match tx.try_push_bytes(&bytes) {
                    Ok(()) => break,
                    Err(RingError::Full) => {
                        full += 1;
                        tx.flush();
                        std::hint::spin_loop();
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            if seq % 16 == 0 {
                tx.flush();
            }
        }
        tx.flush();
        full
    });
    let mut seq = 0u64;
    while seq < COUNT {
        rx.read_batch(64, |p| {
            let len = (seq as usize * 7919) % 1501;
            assert_eq!(p.len(), len, "frame {seq}");
            assert!(p == pattern(seq, len), "frame {seq} content");
            assert_eq!(p.as_ptr() as usize % 16, 0, "payloads are aligned for rkyv");
            seq += 1;
        })
        .unwrap();
    }
    let full = producer.join().unwrap();
    assert!(full > 0, "the producer met a full ring and waited (backpressure)");
}

#[test]
fn a_corrupt_frame_is_an_error_not_a_panic() {
    let (mut tx, mut rx) = Ring::anonymous(4096).unwrap().split();
    for i in 0..3u8 {
        tx.try_push_bytes(&[i; 40]).unwrap();
    }
    tx.flush();
    // Frames take 64 bytes each; break the magic of the second.
    Ring::corrupt_for_test(&tx, 64 + 5, 0xee);
    let mut got = Vec::new();
    let err = rx.read_batch(10, |p| got.push(p[0])).unwrap_err();
    assert!(matches!(err, RingError::Corrupt { offset: 64, .. }), "{err}");
    assert_eq!(got, vec![0], "frames before the corrupt one are delivered");
    assert!(rx.read_batch(10, |_| {}).is_err(), "the ring stays stopped");

    // A length that runs past the data.
    let (mut tx, mut rx) = Ring::anonymous(4096).unwrap().split();
    tx.try_push_bytes(&[1; 40]).unwrap();
    tx.flush();
    Ring::corrupt_for_test(&tx, 1, 0x7f);
    assert!(matches!(rx.read_batch(10, |_| {}), Err(RingError::Corrupt { .. })));

    // A payload that is not the archive it claims to be fails validation.
    let (mut tx, mut rx) = Ring::anonymous(4096).unwrap().split();
    let msg = ToReplication { server: ServerId(1), incarnation: Incarnation(1), body: ServerMsg::Register };
    tx.try_push(&msg).unwrap();
    tx.flush();
    let mut payload_len = 0;
    rx.read_batch(1, |p| payload_len = p.len()).unwrap();
    let (mut tx, mut rx) = Ring::anonymous(4096).unwrap().split();
    tx.try_push_bytes(&vec![0xff; payload_len]).unwrap();
    tx.flush();
    let mut invalid = false;
    rx.read_batch(1, |p| invalid = access::<shardmesh::protocol::messages::ArchivedToReplication>(p).is_err()).unwrap();
    assert!(invalid);
}

#[test]
fn a_file_backed_ring_is_shared_and_a_bad_file_is_refused() {
    let dir = std::env::temp_dir().join(format!("shardmesh-ring-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ring");
    let (mut tx, _) = Ring::create(&path, 4096).unwrap().split();
    let (_, mut rx) = Ring::open(&path).unwrap().split();
    tx.try_push_bytes(b"across mappings").unwrap();
    tx.flush();
    let mut got = Vec::new();
    rx.read_batch(1, |p| got.extend_from_slice(p)).unwrap();
    assert_eq!(got, b"across mappings");

    let bad = dir.join("bad");
    std::fs::write(&bad, vec![0u8; 8192]).unwrap();
    assert!(matches!(Ring::open(&bad), Err(RingError::BadHeader(_))));
    std::fs::write(&bad, b"short").unwrap();
    assert!(matches!(Ring::open(&bad), Err(RingError::BadHeader(_))));
    assert!(matches!(Ring::anonymous(5000), Err(RingError::BadHeader(_))));
    std::fs::remove_dir_all(&dir).unwrap();
}
