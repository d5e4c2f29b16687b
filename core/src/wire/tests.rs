//! Table tests for the wire codec.

use super::*;

fn round_trip(msg: Message<'_>) {
    let mut buf = BytesMut::new();
    encode(&msg, &mut buf);
    let (got, used) = decode(&buf).expect("valid").expect("complete");
    assert_eq!(got, msg);
    assert_eq!(used, buf.len());
    // Every strict prefix is "need more bytes", never an error.
    for cut in 0..buf.len() {
        assert_eq!(decode(&buf[..cut]), Ok(None), "prefix of {cut} bytes");
    }
}

#[test]
fn round_trips() {
    let blob = Digest::of(b"blob");
    round_trip(Message::KeepAlive);
    round_trip(Message::Handshake { version: PROTOCOL_VERSION, peer_id: PeerId([7; 16]) });
    round_trip(Message::Bitfield { blob, num_pieces: 9, bits: &[0xff, 0x80] });
    round_trip(Message::Have { blob, piece: 3 });
    round_trip(Message::Request { blob, piece: u32::MAX });
    round_trip(Message::Piece { blob, piece: 1, data: b"abc" });
    round_trip(Message::Cancel { blob, piece: 0 });
    round_trip(Message::Reject { blob, piece: 2, reason: RejectReason::Busy });
    round_trip(Message::Error { code: 500, message: "boom" });
}
