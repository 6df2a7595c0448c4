//! The plug-in side of the KMS plug-in protocol (`zkey-kms-protocol`'s `serve`): JSON lines a
//! plug-in reads on stdin, from zkey or from whoever else runs it, through the whole loop
//! (line reading, handshake, request parsing, dispatch, the answer written). A request that
//! parses must serialise and parse back to itself.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use zkey_kms_protocol::{
    serve, ConfigureResult, GeneratedKey, Hello, ImportedKey, KmsKey, Notices, PluginInfo,
    PluginV1, Request, WireError, XtsPart,
};

/// A plug-in that greets and then refuses every request: the loop, not a KMS, is under test.
struct Refuser;

fn no() -> WireError {
    WireError::new(zkey_kms_protocol::ErrorCode::Internal, "refused")
}

type Map = BTreeMap<String, String>;

impl PluginV1 for Refuser {
    fn hello(&mut self, _config_dir: Option<&Path>) -> Result<Hello, WireError> {
        Ok(Hello {
            version: 1,
            name: "FUZZ".into(),
            description: "fuzz target".into(),
        })
    }
    fn bind(&mut self, _: &Path, _: &mut Notices) -> Result<(), WireError> {
        Err(no())
    }
    fn info(&mut self, _: &mut Notices) -> Result<PluginInfo, WireError> {
        Err(no())
    }
    fn configure(
        &mut self,
        _: Option<Vec<String>>,
        _: Option<Vec<String>>,
        _: Map,
        _: &mut Notices,
    ) -> Result<ConfigureResult, WireError> {
        Err(no())
    }
    fn supports_key_type(&mut self, _: &str, _: &mut Notices) -> Result<bool, WireError> {
        Ok(false)
    }
    fn generate_key(
        &mut self,
        _: &str,
        _: u32,
        _: XtsPart,
        _: Option<String>,
        _: Map,
        _: &mut Notices,
    ) -> Result<GeneratedKey, WireError> {
        Err(no())
    }
    fn set_key_properties(
        &mut self,
        _: &str,
        _: BTreeMap<String, Option<String>>,
        _: &mut Notices,
    ) -> Result<(), WireError> {
        Err(no())
    }
    fn get_key_properties(&mut self, _: &str, _: &mut Notices) -> Result<Map, WireError> {
        Ok(Map::new())
    }
    fn remove_key(&mut self, _: &str, _: Map, _: &mut Notices) -> Result<(), WireError> {
        Err(no())
    }
    fn list_keys(
        &mut self,
        _: Option<String>,
        _: Map,
        _: Map,
        _: &mut Notices,
    ) -> Result<Vec<KmsKey>, WireError> {
        Ok(Vec::new())
    }
    fn import_key(&mut self, _: &str, _: &str, _: &mut Notices) -> Result<ImportedKey, WireError> {
        Err(no())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let _ = serve(&mut Refuser, data, &mut out);
    for line in data.split(|b| *b == b'\n') {
        if let Ok(r) = serde_json::from_slice::<Request>(line) {
            let json = serde_json::to_vec(&r).expect("a request serialises");
            let again: Request = serde_json::from_slice(&json).expect("re-parses");
            assert_eq!(again, r);
        }
    }
});
