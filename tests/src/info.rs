//! `.info` files as someone who knows the format (but not the adapter's MAC key) rewrites them:
//! for the tests of what the MAC catches, and to make repositories as older versions wrote them.

use sha2::{Digest, Sha256};

/// Rewrites `.info` text: `edit` changes the property lines (without `__hash__`), then the
/// reference's hash is recomputed.
pub fn forge(
    text: &str,
    edit: impl FnOnce(Vec<(String, String)>) -> Vec<(String, String)>,
) -> String {
    let props: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("__hash__="))
        .map(|l| {
            let (n, v) = l.split_once('=').unwrap();
            (n.to_string(), v.to_string())
        })
        .collect();
    let props = edit(props);
    let mut h = Sha256::new();
    let mut out = String::new();
    for (n, v) in &props {
        h.update(n.as_bytes());
        h.update(v.as_bytes());
        out.push_str(&format!("{n}={v}\n"));
    }
    out.push_str(&format!("__hash__={}\n", crate::hex(&h.finalize())));
    out
}

/// `.info` text as zkey wrote it before properties had a MAC.
pub fn without_mac(text: &str) -> String {
    forge(text, |p| {
        p.into_iter().filter(|(n, _)| n != "__mac__").collect()
    })
}

/// Copies the keys of `from` into the new directory `to` in the format older versions wrote
/// (no MAC; the adapter has never seen `to`, so it accepts that format until the next change),
/// each key's files named by `rename(key)`.
pub fn old_format_repository(
    from: &std::path::Path,
    to: &std::path::Path,
    rename: impl Fn(&str) -> String,
) {
    std::fs::create_dir(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        let name = f.file_name().into_string().unwrap();
        let Some((key, ext)) = name.rsplit_once('.') else {
            continue;
        };
        let target = to.join(format!("{}.{ext}", rename(key)));
        match ext {
            "info" => std::fs::write(
                target,
                without_mac(&std::fs::read_to_string(f.path()).unwrap()),
            )
            .unwrap(),
            "skey" | "pass" => {
                std::fs::copy(f.path(), target).unwrap();
            }
            _ => {}
        }
    }
}
