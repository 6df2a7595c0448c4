//! zkey's side of the KMS plug-in protocol (`zkey-kms-protocol`'s `PluginClient`): the lines a
//! plug-in answers with, read as zkey reads them (line reading, then the response envelope and
//! each typed result zkey asks for).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use zkey_kms_protocol::{
    parse_response, read_line, ConfigureResult, GeneratedKey, Hello, ImportedKey, KeyStatusReport,
    KmsKey, OptionSpec, PluginInfo, ReencipherReport,
};

fn each_result(line: &str) {
    let _ = parse_response::<Hello>(line);
    let _ = parse_response::<PluginInfo>(line);
    let _ = parse_response::<Vec<OptionSpec>>(line);
    let _ = parse_response::<ConfigureResult>(line);
    let _ = parse_response::<bool>(line);
    let _ = parse_response::<()>(line);
    let _ = parse_response::<GeneratedKey>(line);
    let _ = parse_response::<BTreeMap<String, String>>(line);
    let _ = parse_response::<Vec<KmsKey>>(line);
    let _ = parse_response::<ImportedKey>(line);
    let _ = parse_response::<ReencipherReport>(line);
    let _ = parse_response::<KeyStatusReport>(line);
}

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    while let Ok(Some(line)) = read_line(&mut input) {
        each_result(&line);
    }
});
