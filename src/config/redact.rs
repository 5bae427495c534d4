//! Masking passwords in text bound for a terminal or a log.

/// Masks passwords in text: the password of any `scheme://user:password@` URL and the value
/// of any `...password=value` / `...secret=value` pair.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest.find(|c: char| c.is_whitespace() || "/\"'`<>,;".contains(c)).unwrap_or(rest.len());
        let authority = &rest[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon + 1]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    redact_pairs(&out)
}

fn redact_pairs(text: &str) -> String {
    // ASCII lowercasing keeps byte offsets, so ranges found in `lower` index `text`.
    let lower = text.to_ascii_lowercase();
    let mut ranges = Vec::new();
    for key in ["password=", "secret=", "password = \"", "secret = \""] {
        let mut from = 0;
        while let Some(i) = lower[from..].find(key) {
            let start = from + i + key.len();
            let end = text[start..]
                .find(|c: char| c.is_whitespace() || "&\"',;".contains(c))
                .map_or(text.len(), |e| start + e);
            ranges.push((start, end));
            from = end.max(start);
        }
    }
    ranges.sort_unstable();
    let (mut out, mut last) = (String::with_capacity(text.len()), 0);
    for (start, end) in ranges {
        if start >= last {
            out.push_str(&text[last..start]);
            out.push_str("***");
            last = end;
        }
    }
    out.push_str(&text[last..]);
    out
}
