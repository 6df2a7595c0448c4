//! KMIP TTLV from the network (`kms-plugin`'s `kmip::ttlv`): the messages a KMIP server sends
//! the plug-in, decoded and then read as the plug-in reads a response. The decoder is strict, so
//! what decodes has exactly one encoding: it must encode back to the same bytes.
#![no_main]

use kms_plugin::kmip::ttlv::{encoded_len, Item};
use kms_plugin::kmip::{parse_attributes, read_response, Operation};
use libfuzzer_sys::fuzz_target;

/// The requests the plug-in sends, alone and batched (as `get_attributes_batch` does).
const OPS: [&[Operation]; 6] = [
    &[Operation::DiscoverVersions],
    &[Operation::Get],
    &[Operation::GetAttributes],
    &[Operation::Locate],
    &[Operation::Create, Operation::Activate],
    &[
        Operation::GetAttributes,
        Operation::GetAttributes,
        Operation::GetAttributes,
    ],
];

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.get(..8) {
        let _ = encoded_len(header.try_into().expect("8 bytes"));
    }
    if let Ok(item) = Item::decode(data) {
        assert_eq!(item.encode().expect("a decoded item encodes"), data);
    }
    for ops in OPS {
        if let Ok(items) = read_response(data, ops) {
            assert_eq!(items.len(), ops.len(), "one result per request item");
            for payload in items.into_iter().flatten() {
                let _ = parse_attributes(&payload);
            }
        }
    }
});
