//! Audit log lines (`ap-sim` TKE log, zkey's repository log), read back by `zkey audit`: one
//! JSON `Record` per line. What parses must serialise and parse back to the same record.
#![no_main]

use ap_sim::audit::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Record>(data) {
        let json = serde_json::to_vec(&r).expect("a record serialises");
        let again: Record = serde_json::from_slice(&json).expect("re-parses");
        assert_eq!(again, r);
    }
});
