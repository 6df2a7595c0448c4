//! Key names and the wildcard patterns that select keys, APQNs and volumes.
//!
//! A key name becomes part of four file names in the repository (`<name>.skey`, `.info`,
//! `.renc`, `.pass`) and of generated crypttab lines and shell commands, so [`KeyName`] only
//! admits names that are safe in all of those places. It is the only way to name a key in the
//! repository API, so a path such as `../x` can never reach the file system.
//!
//! [`Pattern`] is fnmatch(3) with flags 0, as the reference uses for `-N`, `-a` and `-l`
//! filters: `*` matches any run of characters (also `/` and a leading `.`), `?` one character,
//! `[...]` one character of a set (`[!...]` or `[^...]` negated, `a-z` ranges), `\` quotes the
//! next character. Matching is iterative and linear in memory, so no pattern can exhaust the
//! stack.

use std::fmt;
use std::str::FromStr;

use ap_sim::apqn::Apqn;

use infra::glob::Glob;

use crate::volume::Volume;

/// Characters the reference forbids in key names: they would break paths, quoting, or
/// wildcard filters.
pub const FORBIDDEN_CHARS: &[char] = &['/', '\\', ' ', '*', '?', '\'', '"'];

/// Characters the reference allows in key names but that `-N` reads as wildcards (`b[1]`
/// selects `b1`): refused in new names ([`KeyName::check_new`]); an existing key keeps its name
/// and is selected by it, since a `-N` that names a key exactly selects that key alone
/// ([`Pattern::resolve`]).
pub const WILDCARD_CHARS: &[char] = &['[', ']'];

/// Longest key name in bytes: `NAME_MAX` (255) minus the 5 bytes of the longest extension
/// (`.skey`, `.info`, `.renc`, `.pass`), so that every file of the key can be created.
pub const MAX_NAME_LEN: usize = 250;

/// A valid repository key name. In files (a master key change's state) it is its string; one
/// that does not parse as a name is refused when the file is read, not skipped later.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct KeyName(String);

impl TryFrom<String> for KeyName {
    type Error = KeyNameError;
    fn try_from(s: String) -> Result<Self, KeyNameError> {
        KeyName::new(&s)
    }
}

impl From<KeyName> for String {
    fn from(k: KeyName) -> String {
        k.0
    }
}

/// Why a string is not a key name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyNameError {
    #[error("a key name must not be empty")]
    Empty,
    #[error("key name '{name}' contains '{ch}': names must not contain / \\ space * ? ' \"")]
    ForbiddenChar { name: String, ch: char },
    #[error("key name '{0}' contains a control character: use printable characters only")]
    ControlChar(String),
    #[error(
        "key name '{0}' starts with '.': such names are reserved for the repository's own files"
    )]
    LeadingDot(String),
    #[error("key name is {len} bytes long: at most {MAX_NAME_LEN} bytes are allowed")]
    TooLong { len: usize },
    #[error("key name '{name}' contains '{ch}', which a -N filter reads as a wildcard (-N 'b[1]' selects 'b1'): choose a name without [ or ]. Existing keys with such names keep working; rename one with `zkey rename -N {quoted} -w NEW-NAME`", quoted = quote(.name))]
    Wildcard { name: String, ch: char },
}

impl KeyName {
    /// Validates `name`. Stricter than the reference in two ways, both because the name is a file
    /// name: no leading `.` (hidden files, `.lock`, temporaries of atomic writes) and no control
    /// characters (a newline would split crypttab lines).
    pub fn new(name: &str) -> Result<Self, KeyNameError> {
        if name.is_empty() {
            return Err(KeyNameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(KeyNameError::TooLong { len: name.len() });
        }
        if let Some(ch) = name.chars().find(|c| FORBIDDEN_CHARS.contains(c)) {
            return Err(KeyNameError::ForbiddenChar {
                name: name.to_string(),
                ch,
            });
        }
        if name.chars().any(char::is_control) {
            return Err(KeyNameError::ControlChar(name.escape_debug().to_string()));
        }
        if name.starts_with('.') {
            return Err(KeyNameError::LeadingDot(name.to_string()));
        }
        Ok(KeyName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Checks a name for a key about to be made (generate, import, copy, rename): no wildcard
    /// characters, so that every `-N` filter a user types or copies from advice selects it as
    /// written. Names read from the repository are not checked: they stay usable.
    pub fn check_new(&self) -> Result<(), KeyNameError> {
        match self.0.chars().find(|c| WILDCARD_CHARS.contains(c)) {
            Some(ch) => Err(KeyNameError::Wildcard {
                name: self.0.clone(),
                ch,
            }),
            None => Ok(()),
        }
    }
}

impl FromStr for KeyName {
    type Err = KeyNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyName::new(s)
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for KeyName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// An fnmatch-style wildcard pattern (see the module documentation): the suite's one matcher,
/// `infra::glob`, with what zkey matches it against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(Glob);

impl Pattern {
    /// Compiles `pattern`. Every string is a valid pattern: as in fnmatch, a `[` without a
    /// closing `]` and a trailing `\` stand for themselves.
    pub fn new(pattern: &str) -> Self {
        Pattern(Glob::new(pattern))
    }

    /// The pattern that matches exactly `text`.
    pub fn literal(text: &str) -> Self {
        Pattern(Glob::literal(text))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The pattern as the user meant it among `names` (the keys there are): when one of them
    /// is spelled exactly as the pattern, that name alone, so that `-N 'b[1]'` selects the key
    /// `b[1]` and not `b1`; otherwise the pattern with its wildcards.
    pub fn resolve<S: AsRef<str>>(&self, names: impl IntoIterator<Item = S>) -> Pattern {
        if !self.is_literal() && names.into_iter().any(|n| n.as_ref() == self.as_str()) {
            Pattern::literal(self.as_str())
        } else {
            self.clone()
        }
    }

    /// Whether the pattern contains no wildcard, i.e. it matches exactly one string.
    pub fn is_literal(&self) -> bool {
        self.0.is_literal()
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        self.0.matches(text)
    }

    pub fn matches_name(&self, name: &KeyName) -> bool {
        self.matches(name.as_str())
    }

    /// Matches an APQN as the reference does for `-a` filters: a pattern without wildcards is
    /// an APQN in any spelling (`8.2f` is `08.002f`), one with wildcards is matched against the
    /// normal form `cc.dddd`.
    pub fn matches_apqn(&self, apqn: &Apqn) -> bool {
        if self.is_literal() {
            if let Ok(a) = self.as_str().parse::<Apqn>() {
                return a == *apqn;
            }
        }
        self.matches(&apqn.to_string())
    }

    /// Matches a volume as the reference's `-l` filter does: a pattern with a `:` is matched
    /// against `dev:dm-name`, a pattern without one against the device alone.
    pub fn matches_volume(&self, volume: &Volume) -> bool {
        if self.as_str().contains(':') {
            self.matches(&volume.to_string())
        } else {
            self.matches(volume.device())
        }
    }
}

impl FromStr for Pattern {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Pattern::new(s))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `text` as one shell word, so that advice a user copies selects exactly what it names (a key
/// name may hold characters the shell or `-N`'s wildcards treat specially).
pub fn quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=+@%,".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// The `-N` argument, as one shell word, that selects the key `name` alone in a command taking
/// a pattern (reencipher, validate, list, kms refresh): its wildcard characters quoted for the
/// pattern, then the whole for the shell.
pub fn quote_selecting(name: &str) -> String {
    quote(&infra::glob::escape(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_follow_the_rules() {
        for good in ["disk1", "my-key_2.x", "a:b", "ä", &"k".repeat(MAX_NAME_LEN)] {
            assert!(KeyName::new(good).is_ok(), "{good:?} rejected");
        }
        assert_eq!(KeyName::new(""), Err(KeyNameError::Empty));
        for bad in ["a/b", "a\\b", "a b", "a*", "a?", "it's", "\"q\""] {
            assert!(
                matches!(KeyName::new(bad), Err(KeyNameError::ForbiddenChar { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            KeyName::new(".hidden"),
            Err(KeyNameError::LeadingDot(_))
        ));
        assert!(matches!(
            KeyName::new("a\nb"),
            Err(KeyNameError::ControlChar(_))
        ));
        assert_eq!(
            KeyName::new(&"k".repeat(MAX_NAME_LEN + 1)),
            Err(KeyNameError::TooLong {
                len: MAX_NAME_LEN + 1
            })
        );
    }

    #[test]
    fn fnmatch_semantics() {
        let cases = [
            ("*", "", true),
            ("*", "anything/at.all", true),
            ("disk*", "disk1", true),
            ("disk*", "dis", false),
            ("d?sk", "disk", true),
            ("d?sk", "dsk", false),
            ("*.002f", "08.002f", true),
            ("0[89].*", "09.0001", true),
            ("0[89].*", "0a.0001", false),
            ("0[!89].*", "0a.0001", true),
            ("0[^89].*", "08.0001", false),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("[]]", "]", true),
            ("[a-]", "-", true),
            ("[abc", "[abc", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**a", "bba", true),
            ("", "", true),
            ("", "x", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                Pattern::new(pattern).matches(text),
                expected,
                "{pattern:?} vs {text:?}"
            );
        }
        assert!(Pattern::new("abc").is_literal());
        assert!(!Pattern::new("a*").is_literal());
    }

    #[test]
    fn volume_filter_matches_device_or_whole() {
        let v: Volume = "/dev/dasdb1:enc_b".parse().unwrap();
        assert!(Pattern::new("/dev/dasd*").matches_volume(&v));
        assert!(!Pattern::new("enc_b").matches_volume(&v));
        assert!(Pattern::new("*:enc_b").matches_volume(&v));
        assert!(!Pattern::new("/dev/dasdb1:x").matches_volume(&v));
    }

    #[test]
    fn apqn_filter_uses_normal_form() {
        let a: Apqn = "8.2f".parse().unwrap();
        assert!(Pattern::new("08.002f").matches_apqn(&a));
        assert!(Pattern::new("08.*").matches_apqn(&a));
        // An APQN without wildcards is an APQN in any spelling, as the README promises.
        assert!(Pattern::new("8.2f").matches_apqn(&a));
        assert!(Pattern::new("08.2F").matches_apqn(&a));
        assert!(!Pattern::new("8.2e").matches_apqn(&a));
    }

    #[test]
    fn new_names_have_no_wildcards_but_existing_ones_stay_usable() {
        let legacy = KeyName::new("b[1]").expect("an existing name still parses");
        let err = legacy.check_new().unwrap_err();
        assert_eq!(
            err,
            KeyNameError::Wildcard {
                name: "b[1]".into(),
                ch: '['
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("zkey rename -N 'b[1]' -w"), "{msg}");
        assert!(KeyName::new("b]").unwrap().check_new().is_err());
        assert!(KeyName::new("b1").unwrap().check_new().is_ok());
    }

    #[test]
    fn a_pattern_that_spells_an_existing_name_selects_that_name_alone() {
        let p = Pattern::new("b[1]");
        let both = ["b1", "b[1]"];
        let r = p.resolve(both);
        assert!(r.matches("b[1]") && !r.matches("b1"));
        // Without a key of that spelling it is the wildcard pattern it always was.
        let r = p.resolve(["b1", "b2"]);
        assert!(r.matches("b1") && !r.matches("b[1]"));
        assert!(Pattern::new("b*").resolve(both).matches("b1"));
    }

    #[test]
    fn advice_selects_exactly_the_key() {
        assert_eq!(quote_selecting("disk1"), "disk1");
        assert_eq!(quote_selecting("b[1]"), "'b\\[1\\]'");
        let p = Pattern::new(&infra::glob::escape("b[1]"));
        assert!(p.matches("b[1]") && !p.matches("b1"));
    }

    #[test]
    fn quote_makes_one_shell_word() {
        assert_eq!(quote("disk1"), "disk1");
        assert_eq!(quote("/dev/dasdb1:enc"), "/dev/dasdb1:enc");
        assert_eq!(quote("b[1]"), "'b[1]'");
        assert_eq!(quote("it's"), "'it'\\''s'");
    }

    /// A naive recursive matcher as an oracle for `*`/`?`/literals.
    fn oracle(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| oracle(rest, &t[i..])),
            Some(('?', rest)) => !t.is_empty() && oracle(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && oracle(rest, &t[1..]),
        }
    }

    proptest! {
        #[test]
        fn pattern_never_panics(p in "\\PC{0,24}", t in "\\PC{0,24}") {
            let pat = Pattern::new(&p);
            let _ = pat.matches(&t);
            let _ = pat.is_literal();
        }

        #[test]
        fn pattern_agrees_with_oracle(p in "[ab*?]{0,8}", t in "[ab]{0,10}") {
            let pc: Vec<char> = p.chars().collect();
            let tc: Vec<char> = t.chars().collect();
            prop_assert_eq!(Pattern::new(&p).matches(&t), oracle(&pc, &tc));
        }

        #[test]
        fn literal_pattern_matches_itself(s in "[a-z0-9._-]{0,16}") {
            prop_assert!(Pattern::new(&s).matches(&s));
        }
    }
}
