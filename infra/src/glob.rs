//! fnmatch(3)-style wildcard patterns with flags 0, the one matcher of the suite (zkey's `-N`,
//! `-a`, `-l` filters, `audit show`, the plug-ins' label filters): `*` matches any run of
//! characters (also `/` and a leading `.`), `?` one character, `[...]` one character of a set
//! (`[!...]` or `[^...]` negated, `a-z` ranges), `\` quotes the next character. Matching is
//! iterative with one backtrack point: linear in memory, O(text x pattern) in time, so no
//! pattern can exhaust the stack or take exponential time.

/// One element of a compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyOne,
    AnyRun,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    source: String,
    tokens: Vec<Token>,
}

impl Glob {
    /// Compiles `pattern`. Every string is a valid pattern: as in fnmatch, a `[` without a
    /// closing `]` and a trailing `\` stand for themselves.
    pub fn new(pattern: &str) -> Self {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => {
                    // Consecutive stars are one star; it keeps matching linear.
                    if tokens.last() != Some(&Token::AnyRun) {
                        tokens.push(Token::AnyRun);
                    }
                    i += 1;
                }
                '?' => {
                    tokens.push(Token::AnyOne);
                    i += 1;
                }
                '\\' if i + 1 < chars.len() => {
                    tokens.push(Token::Literal(chars[i + 1]));
                    i += 2;
                }
                '[' => match parse_class(&chars, i + 1) {
                    Some((token, next)) => {
                        tokens.push(token);
                        i = next;
                    }
                    None => {
                        tokens.push(Token::Literal('['));
                        i += 1;
                    }
                },
                c => {
                    tokens.push(Token::Literal(c));
                    i += 1;
                }
            }
        }
        Glob {
            source: pattern.to_string(),
            tokens,
        }
    }

    /// The pattern that matches exactly `text`: every wildcard character in it quoted.
    pub fn literal(text: &str) -> Self {
        Glob::new(&escape(text))
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern contains no wildcard, i.e. it matches exactly one string.
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        // Classic greedy matching with one backtrack point: the last `*` seen and the text
        // position it currently covers up to. O(len(text) * len(pattern)), no recursion.
        let (mut p, mut t) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::AnyRun) => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(tok) if token_matches(tok, text[t]) => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        p = sp + 1;
                        t = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        self.tokens[p..].iter().all(|tok| *tok == Token::AnyRun)
    }
}

/// `text` with every character that is syntax in a pattern (`*`, `?`, `[`, `]`, `\\`) quoted by
/// a `\\`, so that as a pattern it matches `text` alone.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn parse_class(chars: &[char], mut i: usize) -> Option<(Token, usize)> {
    let negated = matches!(chars.get(i), Some('!') | Some('^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let mut c = *chars.get(i)?;
        // A `]` right after `[` or `[!` is a member, not the end (POSIX).
        if c == ']' && !first {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        first = false;
        if c == '\\' {
            i += 1;
            c = *chars.get(i)?;
        }
        i += 1;
        let is_range = chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|n| *n != ']');
        if is_range {
            let mut hi = chars[i + 1];
            i += 2;
            if hi == '\\' {
                hi = *chars.get(i)?;
                i += 1;
            }
            ranges.push((c, hi));
        } else {
            ranges.push((c, c));
        }
    }
}

fn token_matches(token: &Token, c: char) -> bool {
    match token {
        Token::Literal(l) => *l == c,
        Token::AnyOne => true,
        Token::AnyRun => true,
        Token::Class { negated, ranges } => {
            ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_are_linear_not_exponential() {
        // The recursive matcher this replaces took exponential time on this.
        let p = Glob::new(&"*a".repeat(30));
        assert!(!p.matches(&"a".repeat(29)));
        assert!(p.matches(&"a".repeat(30)));
    }

    #[test]
    fn classes_ranges_and_quotes() {
        assert!(Glob::new("k[0-9]").matches("k7"));
        assert!(!Glob::new("k[!0-9]").matches("k7"));
        assert!(Glob::new("a\\*").matches("a*"));
        assert!(!Glob::new("a\\*").matches("ab"));
        assert!(Glob::new("[").matches("["));
        assert!(Glob::new("x?z").matches("xyz"));
    }

    #[test]
    fn an_escaped_text_matches_itself_alone() {
        for text in ["b[1]", "a*b", "q?", "[!x]", "back\\slash", "plain"] {
            let g = Glob::literal(text);
            assert!(g.is_literal(), "{text}");
            assert!(g.matches(text), "{text}");
        }
        assert!(!Glob::literal("b[1]").matches("b1"));
        assert_eq!(escape("b[1]"), "b\\[1\\]");
    }
}
