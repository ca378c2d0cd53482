//! Bounds on an XML property list, checked before the `plist` crate sees it.
//!
//! The plist crate builds values recursively and has no depth limit of its own (its event
//! reader is not public), so deep nesting from a hostile peer could exhaust the stack. This
//! scan counts tags and the nesting of `<array>` and `<dict>`; tags inside comments or CDATA
//! count too, which only makes it stricter.

/// Why an XML plist was refused before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeError {
    /// `<array>`/`<dict>` nested deeper than allowed.
    TooDeep(usize),
    /// More tags than allowed.
    TooManyTags(usize),
}

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShapeError::TooDeep(max) => write!(f, "plist: nested deeper than {max}"),
            ShapeError::TooManyTags(max) => write!(f, "plist: more than {max} elements"),
        }
    }
}

impl std::error::Error for ShapeError {}

/// Checks nesting depth (the top collection counts as 1) and tag count.
pub fn check(xml: &[u8], max_depth: usize, max_tags: usize) -> Result<(), ShapeError> {
    let mut depth = 0usize;
    let mut tags = 0usize;
    let mut rest = xml;
    while let Some(open) = rest.iter().position(|&b| b == b'<') {
        tags += 1;
        if tags > max_tags {
            return Err(ShapeError::TooManyTags(max_tags));
        }
        let after = rest.get(open + 1..).unwrap_or_default();
        if let Some(end) = unparsed_end(after) {
            // A comment, CDATA section or processing instruction: a `>` inside it ends
            // nothing, and a `</array>` inside it closes nothing.
            rest = after.get(end..).unwrap_or_default();
            continue;
        }
        let close = after.iter().position(|&b| b == b'>').unwrap_or(after.len());
        let tag = after.get(..close).unwrap_or_default();
        let (closing, name) = match tag.strip_prefix(b"/") {
            Some(name) => (true, name),
            None => (false, tag),
        };
        // The XML parser matches local names, so `<x:array>` is an array too.
        let qualified_len = name
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(b))
            .count();
        let qualified = name.get(..qualified_len).unwrap_or_default();
        let local = qualified.rsplit(|&b| b == b':').next().unwrap_or_default();
        let is_collection = matches!(local, b"array" | b"dict");

        if is_collection && closing {
            depth = depth.saturating_sub(1);
        } else if is_collection && !tag.ends_with(b"/") {
            depth += 1;
            if depth > max_depth {
                return Err(ShapeError::TooDeep(max_depth));
            }
        }
        rest = after.get(close..).unwrap_or_default();
    }
    Ok(())
}

/// Markup whose text the XML parser does not read as tags: how it opens and closes.
const UNPARSED: &[(&[u8], &[u8])] = &[(b"!--", b"-->"), (b"![CDATA[", b"]]>"), (b"?", b"?>")];

/// If `after` (what follows a `<`) opens a comment, CDATA section or processing instruction,
/// where it ends (past its closing delimiter, or the end of the input if it has none).
fn unparsed_end(after: &[u8]) -> Option<usize> {
    let (open, close) = UNPARSED.iter().find(|(open, _)| after.starts_with(open))?;
    let body = after.get(open.len()..).unwrap_or_default();
    let end = body
        .windows(close.len())
        .position(|window| window == *close)
        .map_or(after.len(), |at| open.len() + at + close.len());
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_and_tags_are_bounded() {
        let ok =
            b"<plist><dict><key>a</key><array><string>x</string></array><array/></dict></plist>";
        assert_eq!(check(ok, 2, 100), Ok(()));
        assert_eq!(check(ok, 1, 100), Err(ShapeError::TooDeep(1)));
        assert_eq!(check(ok, 2, 5), Err(ShapeError::TooManyTags(5)));
        // `ok` has 11 tags, the self-closing `<array/>` one of them.
        assert_eq!(check(ok, 2, 11), Ok(()));
        assert_eq!(check(ok, 2, 10), Err(ShapeError::TooManyTags(10)));
        let deep = format!("{}{}", "<array>".repeat(100), "</array>".repeat(100));
        assert_eq!(
            check(deep.as_bytes(), 16, 1000),
            Err(ShapeError::TooDeep(16))
        );
        assert_eq!(
            check(b"<dict", 1, 10),
            Ok(()),
            "an unterminated tag is the parser's to refuse"
        );
    }

    /// Found by the `phase_plist` fuzz target's depth property
    /// (fuzz/regressions/phase_plist/): a `>` in a comment ended the "tag" early, so the
    /// `</array>`s after it counted as closings, and a plist nested 6 deep passed a depth
    /// limit of 4. The same held for CDATA sections and processing instructions.
    #[test]
    fn closings_inside_comments_cdata_and_instructions_close_nothing() {
        let inner = "<array><array><array><array></array></array></array></array>";
        for hidden in [
            "<!-- > </array></array></array></array> -->",
            "<string><![CDATA[> </array></array></array></array>]]></string>",
            "<?pi > </array></array></array></array> ?>",
        ] {
            let xml =
                format!("<plist><dict><key>a</key><array>{hidden}{inner}</array></dict></plist>");
            assert_eq!(
                check(xml.as_bytes(), 4, 1024),
                Err(ShapeError::TooDeep(4)),
                "{hidden}"
            );
        }
        let commented = b"<?xml version=\"1.0\"?><!-- <dict> --><plist><dict></dict></plist>";
        assert_eq!(check(commented, 1, 100), Ok(()), "a comment opens nothing");
        assert_eq!(
            check(b"<plist><!-- <array>", 1, 100),
            Ok(()),
            "unterminated"
        );
    }
}
