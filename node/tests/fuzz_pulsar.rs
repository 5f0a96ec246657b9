//! Stable-toolchain fuzzing of the Pulsar frame decoder (bytes from the broker), see
//! core/tests/support/fuzzing.rs.

#[path = "../../core/tests/support/fuzzing.rs"]
mod fuzzing;

use meshd_node::store::pulsar::codec::samples::{message_cmd as message, metadata};
use meshd_node::store::pulsar::codec::{decode_frame, encode_command, encode_payload_frame};
use pulsar::proto::base_command::Type;
use pulsar::proto::{BaseCommand, CommandPing, CommandSendReceipt, MessageIdData};

#[test]
fn pulsar_frames() {
    let payload = br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"x":1}}"#;
    let seeds = vec![
        encode_payload_frame(&message(), &metadata(), payload, true, None),
        encode_payload_frame(&message(), &metadata(), payload, false, None),
        encode_payload_frame(
            &message(),
            &metadata(),
            payload,
            true,
            Some(&[0x08, 0x96, 0x01]),
        ),
        encode_command(&BaseCommand {
            r#type: Type::Ping as i32,
            ping: Some(CommandPing {}),
            ..Default::default()
        }),
        encode_command(&BaseCommand {
            r#type: Type::SendReceipt as i32,
            send_receipt: Some(CommandSendReceipt {
                producer_id: 1,
                sequence_id: 2,
                message_id: Some(MessageIdData {
                    ledger_id: 5,
                    entry_id: 6,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    ];
    fuzzing::run("pulsar decode_frame", seeds, |bytes| {
        // As the reader does: decode frames off the front of the buffer until it needs more.
        let mut rest = bytes;
        while let Ok(Some((_, used))) = decode_frame(rest) {
            assert!(used > 0 && used <= rest.len(), "a frame uses what it had");
            rest = &rest[used..];
        }
    });
}
