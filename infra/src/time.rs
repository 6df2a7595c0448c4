//! The suite's two time stamps, through `chrono`: the audit trail's UTC RFC 3339 with
//! milliseconds (so that records of the two logs merge in order), and the reference's local
//! `YYYY-MM-DD HH:MM:SS` of the key properties.

use chrono::{DateTime, Local, Utc};

/// Now, in UTC: `2026-11-18T11:06:40.123Z`.
pub fn utc_now() -> String {
    utc(Utc::now())
}

/// A UTC time as the audit trail writes it.
pub fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Now, in local time, as the reference's `.info` files hold it: `2026-11-18 12:06:40`.
pub fn local_now() -> String {
    Local::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let at = |s: i64| DateTime::from_timestamp(s, 123_000_000).unwrap();
        assert_eq!(utc(at(0)), "1970-01-01T00:00:00.123Z");
        assert_eq!(utc(at(951_782_400)), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(at(1_795_000_000)), "2026-11-18T11:06:40.123Z");
        let l = local_now();
        assert_eq!(l.len(), 19, "{l}");
        assert_eq!(&l[4..5], "-");
        assert_eq!(&l[10..11], " ");
    }
}
