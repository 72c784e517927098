//! What a datagram must look like before netcode (renetcode) or renet sees it.
//!
//! Every datagram is hostile until netcode has decrypted it, whatever address it claims, and both
//! libraries trust bytes they should not: renetcode slices an 8-byte buffer with a sequence length
//! taken from the first byte, and splits a MAC off a buffer it never checked was long enough,
//! before anything is authenticated; renet indexes its slice buffers with an unchecked index from
//! any authenticated peer. So the gateway (and the bots) check here, cheaply and without keys,
//! that a datagram is one netcode could have sent in that direction to that kind of peer, with the
//! exact size its kind has, and (once netcode has decrypted it) that its renet packet is one of
//! the two kinds a client sends, readable as renet will read it. What fails is dropped and counted by its `Refusal`; nothing that
//! fails reaches either library.
//!
//! Invariant: a datagram that passes `datagram` cannot reach a panic in renetcode's decoding,
//! and a payload that passes `client_payload` cannot reach one in renet's (a property test and a
//! fuzz target drive both libraries with what passes).

use renetcode::NETCODE_MAX_PACKET_BYTES;

use super::wire::INPUT_CHANNEL;
use crate::limits::{PAYLOAD_BYTES_MAX, SEQUENCE_MAX};

/// netcode's packet kinds (the low four bits of the first byte).
pub const NETCODE_REQUEST: u8 = 0;
pub const NETCODE_DENIED: u8 = 1;
pub const NETCODE_CHALLENGE: u8 = 2;
pub const NETCODE_RESPONSE: u8 = 3;
pub const NETCODE_KEEP_ALIVE: u8 = 4;
pub const NETCODE_PAYLOAD: u8 = 5;
pub const NETCODE_DISCONNECT: u8 = 6;

/// netcode 1.02's sizes (renetcode keeps them private).
const MAC_BYTES: usize = 16;
const CHALLENGE_TOKEN_BYTES: usize = 300;
/// Prefix, version info, protocol id, expiry, nonce, private token.
pub const REQUEST_BYTES: usize = 1 + 13 + 8 + 8 + 24 + 1024;

/// renet's packet kinds a client sends us: its inputs (small unreliable messages) and its
/// acknowledgements. Everything else (reliable messages, slices) is a channel we never opened.
pub const RENET_SMALL_UNRELIABLE: u8 = 1;
pub const RENET_ACK: u8 = 4;

/// Who a datagram's address is, to the endpoint that read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// No connection: only a connection request or a challenge response is expected.
    Stranger,
    /// A connected client: keep-alives, payloads and a disconnect.
    Client,
    /// The server, to a client: denials, challenges, keep-alives, payloads, a disconnect.
    Server,
}

/// Why a datagram (or a payload inside one) was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Shorter than any netcode packet.
    Short,
    /// Longer than netcode allows.
    Oversized,
    /// A netcode kind that does not exist.
    UnknownKind,
    /// A kind this peer never sends in this direction (a challenge sent to a server, a payload
    /// from an address with no connection, a connection request from a connected address).
    WrongPeer,
    /// A sequence number longer than 8 bytes, or near the top of the range.
    Sequence,
    /// Not the size its kind has.
    WrongSize,
    /// Authenticated, but not a renet packet a client sends (a slice, a reliable message, a
    /// channel we never opened), or one renet cannot read (it would disconnect the client).
    RenetKind,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::Short,
        Refusal::Oversized,
        Refusal::UnknownKind,
        Refusal::WrongPeer,
        Refusal::Sequence,
        Refusal::WrongSize,
        Refusal::RenetKind,
    ];
}

/// Dropped datagrams by why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Refused {
    pub short: u64,
    pub oversized: u64,
    pub unknown_kind: u64,
    pub wrong_peer: u64,
    pub sequence: u64,
    pub wrong_size: u64,
    pub renet_kind: u64,
}

impl Refused {
    pub fn count(&mut self, why: Refusal) {
        *self.get_mut(why) += 1;
    }
    pub fn get(&self, why: Refusal) -> u64 {
        let mut copy = *self;
        // One match for both: a copy of eight counters costs nothing here.
        *copy.get_mut(why)
    }
    fn get_mut(&mut self, why: Refusal) -> &mut u64 {
        match why {
            Refusal::Short => &mut self.short,
            Refusal::Oversized => &mut self.oversized,
            Refusal::UnknownKind => &mut self.unknown_kind,
            Refusal::WrongPeer => &mut self.wrong_peer,
            Refusal::Sequence => &mut self.sequence,
            Refusal::WrongSize => &mut self.wrong_size,
            Refusal::RenetKind => &mut self.renet_kind,
        }
    }
    pub fn total(&self) -> u64 {
        Refusal::ALL.iter().map(|r| self.get(*r)).sum()
    }
    pub fn add(&mut self, other: &Refused) {
        for r in Refusal::ALL {
            *self.get_mut(r) += other.get(r);
        }
    }
}

/// Checks a datagram from `peer` before netcode sees it; returns its netcode kind.
pub fn datagram(bytes: &[u8], peer: Peer) -> Result<u8, Refusal> {
    if bytes.len() > NETCODE_MAX_PACKET_BYTES {
        return Err(Refusal::Oversized);
    }
    // renetcode refuses anything shorter itself, but checks nothing else before slicing.
    if bytes.len() < 2 + MAC_BYTES {
        return Err(Refusal::Short);
    }
    let kind = bytes[0] & 0x0f;
    let sequence_len = (bytes[0] >> 4) as usize;
    let expected = match (peer, kind) {
        (_, k) if k > NETCODE_DISCONNECT => return Err(Refusal::UnknownKind),
        // A connection request is not encrypted and carries no sequence number.
        (Peer::Stranger, NETCODE_REQUEST) => {
            return if bytes.len() == REQUEST_BYTES { Ok(kind) } else { Err(Refusal::WrongSize) }
        }
        (Peer::Stranger, NETCODE_RESPONSE) => Some(8 + CHALLENGE_TOKEN_BYTES),
        (Peer::Client | Peer::Server, NETCODE_KEEP_ALIVE) => Some(4 + 4),
        (Peer::Client | Peer::Server, NETCODE_PAYLOAD) => None,
        (Peer::Client | Peer::Server, NETCODE_DISCONNECT) => Some(0),
        (Peer::Server, NETCODE_DENIED) => Some(0),
        (Peer::Server, NETCODE_CHALLENGE) => Some(8 + CHALLENGE_TOKEN_BYTES),
        _ => return Err(Refusal::WrongPeer),
    };
    if sequence_len > 8 {
        return Err(Refusal::Sequence);
    }
    let header = 1 + sequence_len;
    let body = bytes.len().checked_sub(header + MAC_BYTES).ok_or(Refusal::WrongSize)?;
    match expected {
        Some(size) if body != size => return Err(Refusal::WrongSize),
        None if body == 0 || body > PAYLOAD_BYTES_MAX => return Err(Refusal::WrongSize),
        _ => {}
    }
    let mut sequence = [0u8; 8];
    sequence[..sequence_len].copy_from_slice(&bytes[1..header]);
    if u64::from_le_bytes(sequence) > SEQUENCE_MAX {
        return Err(Refusal::Sequence);
    }
    Ok(kind)
}

/// Checks a renet packet a client sent (netcode has authenticated it) as renet will read it;
/// returns its sequence number. renet disconnects a peer whose packet it cannot read; here such a packet is
/// dropped and counted instead, and the client stays.
pub fn client_payload(payload: &[u8]) -> Result<u64, Refusal> {
    let mut r = Reader(payload);
    let kind = r.u8().ok_or(Refusal::RenetKind)?;
    let sequence = r.varint().ok_or(Refusal::RenetKind)?;
    match kind {
        RENET_SMALL_UNRELIABLE => {
            if r.u8() != Some(INPUT_CHANNEL) {
                return Err(Refusal::RenetKind);
            }
            let messages = r.u16().ok_or(Refusal::RenetKind)?;
            for _ in 0..messages {
                let len = r.varint().ok_or(Refusal::RenetKind)?;
                r.skip(len).ok_or(Refusal::RenetKind)?;
            }
        }
        RENET_ACK => {
            // renet's own checks on the ranges, each of which it would answer by disconnecting.
            let end = r.varint().ok_or(Refusal::RenetKind)?;
            let size = r.varint().ok_or(Refusal::RenetKind)?;
            let more = r.varint().ok_or(Refusal::RenetKind)?;
            let mut start = end.checked_sub(size).ok_or(Refusal::RenetKind)?;
            for _ in 0..more {
                let gap = r.varint().ok_or(Refusal::RenetKind)?;
                let end = start.checked_sub(gap + 2).ok_or(Refusal::RenetKind)?;
                let size = r.varint().ok_or(Refusal::RenetKind)?;
                start = end.checked_sub(size).ok_or(Refusal::RenetKind)?;
            }
        }
        _ => return Err(Refusal::RenetKind),
    }
    Ok(sequence)
}

/// Reads renet's encoding (the `octets` crate's: big-endian, QUIC variable-length integers).
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn skip(&mut self, n: u64) -> Option<()> {
        self.take(usize::try_from(n).ok()?).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// The top two bits of the first byte give the length: 1, 2, 4 or 8 bytes.
    fn varint(&mut self) -> Option<u64> {
        let first = *self.0.first()?;
        let raw = self.take(1usize << (first >> 6))?;
        Some(raw[1..].iter().fold(u64::from(first & 0x3f), |v, b| (v << 8) | u64::from(*b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_length_that_panicked_renetcode_is_refused() {
        // 0x95: a payload whose sequence is 9 bytes long.
        let mut d = vec![0x95u8];
        d.extend([0u8; 40]);
        assert_eq!(datagram(&d, Peer::Client), Err(Refusal::Sequence));
        // A keep-alive with an 8-byte sequence and too little left for its MAC.
        let mut d = vec![0x84u8];
        d.extend([0u8; 17]);
        assert_eq!(datagram(&d, Peer::Client), Err(Refusal::WrongSize));
    }

    #[test]
    fn each_kind_is_taken_only_from_its_peer_at_its_size() {
        let request = [0u8; REQUEST_BYTES];
        assert_eq!(datagram(&request, Peer::Stranger), Ok(NETCODE_REQUEST));
        assert_eq!(datagram(&request, Peer::Client), Err(Refusal::WrongPeer));
        assert_eq!(datagram(&request[..REQUEST_BYTES - 1], Peer::Stranger), Err(Refusal::WrongSize));
        let mut payload = vec![0x15u8, 7];
        payload.extend([0u8; 30]);
        assert_eq!(datagram(&payload, Peer::Client), Ok(NETCODE_PAYLOAD));
        assert_eq!(datagram(&payload, Peer::Stranger), Err(Refusal::WrongPeer));
        let mut keep_alive = vec![0x14u8, 7];
        keep_alive.extend([0u8; 8 + MAC_BYTES]);
        assert_eq!(datagram(&keep_alive, Peer::Client), Ok(NETCODE_KEEP_ALIVE));
        keep_alive.push(0);
        assert_eq!(datagram(&keep_alive, Peer::Client), Err(Refusal::WrongSize));
        let mut challenge = vec![0x02u8];
        challenge.extend([0u8; 8 + CHALLENGE_TOKEN_BYTES + MAC_BYTES]);
        assert_eq!(datagram(&challenge, Peer::Server), Ok(NETCODE_CHALLENGE));
        assert_eq!(datagram(&challenge, Peer::Stranger), Err(Refusal::WrongPeer));
        let mut top = vec![0x85u8];
        top.extend([0xffu8; 8 + 20]);
        assert_eq!(datagram(&top, Peer::Client), Err(Refusal::Sequence));
        assert_eq!(datagram(&[0x0f; 40], Peer::Client), Err(Refusal::UnknownKind));
        assert_eq!(datagram(&[0x05; 5], Peer::Client), Err(Refusal::Short));
        assert_eq!(datagram(&[0x05; 1401], Peer::Client), Err(Refusal::Oversized));
    }

    #[test]
    fn renet_packets_a_client_sends_pass_and_slices_do_not() {
        assert_eq!(client_payload(&[RENET_SMALL_UNRELIABLE, 5, INPUT_CHANNEL, 0, 0]), Ok(5));
        assert_eq!(client_payload(&[RENET_SMALL_UNRELIABLE, 0x40, 0x01, INPUT_CHANNEL, 0, 1, 2, 7, 7]), Ok(1));
        // A message longer than what is left.
        assert_eq!(client_payload(&[RENET_SMALL_UNRELIABLE, 5, INPUT_CHANNEL, 0, 1, 3, 7]), Err(Refusal::RenetKind));
        assert_eq!(client_payload(&[RENET_SMALL_UNRELIABLE, 5, INPUT_CHANNEL + 1, 0, 0]), Err(Refusal::RenetKind));
        assert_eq!(client_payload(&[RENET_ACK, 9, 0, 0, 0]), Ok(9));
        // Ranges: 5..=8, then a gap of 0 and 2 more (1..=3); a range past zero is refused.
        assert_eq!(client_payload(&[RENET_ACK, 9, 8, 3, 1, 0, 2]), Ok(9));
        assert_eq!(client_payload(&[RENET_ACK, 9, 8, 3, 1, 0, 4]), Err(Refusal::RenetKind));
        assert_eq!(client_payload(&[RENET_ACK, 9, 2, 3, 0]), Err(Refusal::RenetKind));
        assert_eq!(client_payload(&[RENET_ACK, 9, 8, 3, 0x3f]), Err(Refusal::RenetKind));
        for kind in [0u8, 2, 3, 5, 255] {
            assert_eq!(client_payload(&[kind, 1, INPUT_CHANNEL, 0]), Err(Refusal::RenetKind));
        }
        assert_eq!(client_payload(&[]), Err(Refusal::RenetKind));
        assert_eq!(client_payload(&[RENET_ACK, 0xc0, 1]), Err(Refusal::RenetKind));
    }
}
