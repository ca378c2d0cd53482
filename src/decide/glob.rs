//! Glob patterns for device policy rules: `*` matches any run of characters (none included),
//! `?` exactly one, everything else itself, case-sensitively.
//!
//! The matcher keeps one backtracking point (the latest `*`), so its work is at most the
//! pattern's length times the value's, and both are bounded: a pattern by [`MAX_PATTERN_LEN`]
//! at config load, a value by the attribute parser. There is no recursion.

/// Longest pattern accepted, in characters.
pub const MAX_PATTERN_LEN: usize = 256;

/// True when the pattern holds a wildcard (otherwise it is compared exactly).
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// Whether `value` matches `pattern` as a whole.
pub fn matches(pattern: &str, value: &str) -> bool {
    if !is_glob(pattern) {
        return pattern == value;
    }
    let pattern: Vec<char> = pattern.chars().collect();
    let value: Vec<char> = value.chars().collect();

    // `p` and `v` walk the pattern and the value; `star` remembers the latest `*` and the
    // value position it was tried at, so a mismatch retries with that `*` taking one more.
    let (mut p, mut v) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        match (pattern.get(p), value.get(v)) {
            (Some('*'), _) => {
                star = Some((p, v));
                p += 1;
            }
            (Some('?'), _) => {
                p += 1;
                v += 1;
            }
            (Some(expected), Some(actual)) if expected == actual => {
                p += 1;
                v += 1;
            }
            _ => match star {
                Some((star_p, star_v)) => {
                    p = star_p + 1;
                    v = star_v + 1;
                    star = Some((star_p, star_v + 1));
                }
                None => return false,
            },
        }
    }

    // The value is used up: what is left of the pattern must be stars only.
    pattern
        .get(p..)
        .unwrap_or_default()
        .iter()
        .all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcards() {
        let cases = [
            ("iPhone8,1", "iPhone8,1", true),
            ("iPhone8,1", "iPhone8,10", false),
            ("iPhone8,*", "iPhone8,1", true),
            ("iPhone8,*", "iPhone8,", true),
            ("iPhone8,*", "iPhone9,1", false),
            ("iPhone*", "iPad13,1", false),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("?", "", false),
            ("?", "é", true),
            ("??", "é", false),
            ("*,?", "iPhone8,2", true),
            ("*,?", "iPhone8,12", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*c", "abcbc", true),
            ("**", "anything", true),
            ("F2L*", "f2lxk0", false),
            ("*X*", "aXb", true),
            ("a?c*", "abcdef", true),
        ];
        for (pattern, value, expected) in cases {
            assert_eq!(
                matches(pattern, value),
                expected,
                "{pattern:?} vs {value:?}"
            );
        }
    }

    #[test]
    fn pathological_patterns_finish_quickly() {
        // Classic exponential cases for recursive matchers: many stars, a value that almost
        // matches. Bounded by pattern × value steps here.
        let pattern = format!("{}b", "a*".repeat(MAX_PATTERN_LEN / 2 - 1));
        let value = "a".repeat(1024);
        let started = std::time::Instant::now();
        assert!(!matches(&pattern, &value));
        assert!(matches(&format!("{}a", "*a".repeat(100)), &value));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
    }
}
