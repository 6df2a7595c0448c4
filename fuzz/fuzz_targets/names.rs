//! Command-line and `.info` values: APQNs and APQN lists, volumes (`dev:dm-name`) and volume
//! lists, `+`/`-` edits, key names and wildcard patterns, volume types, sector sizes, time
//! stamps, verification patterns, MKVPs, card types and TKE targets.
#![no_main]

use std::str::FromStr;

use ap_sim::adapter::CardType;
use ap_sim::apqn::{self, Apqn};
use ap_sim::sim::Target;
use ap_sim::Mkvp;
use libfuzzer_sys::fuzz_target;
use zkey::properties::{Timestamp, VerificationPattern};
use zkey::volume::{self, Edit};
use zkey::{KeyName, Pattern, SectorSize, Volume, VolumeType};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(a) = Apqn::from_str(s) {
        assert_eq!(Apqn::from_str(&a.to_string()).expect("re-parses"), a);
    }
    let _ = apqn::parse_list(s);
    if let Ok(v) = Volume::from_str(s) {
        assert_eq!(Volume::from_str(&v.to_string()).expect("re-parses"), v);
    }
    let _ = volume::parse_volume_list(s);
    let _ = Edit::<Volume>::parse(s);
    let _ = Edit::<Apqn>::parse(s);
    let name = KeyName::new(s);
    let pattern = Pattern::new(s);
    // A name without wildcard characters matches itself as a pattern (names may contain
    // `[`, which patterns read as a character class, as fnmatch does).
    if let (Ok(n), false) = (&name, s.contains(['*', '?', '['])) {
        assert!(pattern.matches_name(n), "a name matches itself as a pattern");
    }
    let _ = VolumeType::from_str(s);
    let _ = SectorSize::from_str(s);
    let _ = Timestamp::from_str(s);
    let _ = VerificationPattern::from_str(s);
    let _ = Mkvp::from_str(s);
    let _ = CardType::from_str(s);
    let _ = Target::from_str(s);
});
