//! The little XML the S3 client reads and writes: the flat, known responses
//! of S3 (`InitiateMultipartUploadResult`, `ListPartsResult`,
//! `ListBucketResult`, `CompleteMultipartUploadResult`, `Error`) and the
//! `CompleteMultipartUpload` request body.
//!
//! Not a general XML parser: no attributes, CDATA, comments or nesting of an
//! element inside one of the same name are interpreted. S3 responses need
//! none of that, and a response we cannot read becomes an error, not a guess.

/// The inner text of every `<tag>...</tag>` element in `xml`, in order,
/// not unescaped (the inner text may itself hold elements).
pub(crate) fn elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(at) = rest.find(&open) {
        let after = &rest[at + open.len()..];
        // `<Part` must not match `<PartNumber>`: the next byte ends the name.
        match after.as_bytes().first() {
            Some(b'>') | Some(b' ') | Some(b'\t') | Some(b'\r') | Some(b'\n') => {}
            Some(b'/') => {
                // An empty element, `<Tag/>`.
                out.push("");
                rest = after;
                continue;
            }
            _ => {
                rest = after;
                continue;
            }
        }
        let Some(gt) = after.find('>') else { break };
        let body = &after[gt + 1..];
        let Some(end) = body.find(&close) else { break };
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    out
}

/// The unescaped text of the first `<tag>` element in `xml`, if any.
pub(crate) fn text(xml: &str, tag: &str) -> Option<String> {
    elements(xml, tag).first().map(|t| unescape(t))
}

/// Replaces the five predefined entities and numeric character references.
/// An unknown or malformed reference is kept as it is.
pub(crate) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let Some(semi) = tail.find(';').filter(|&i| i <= 10) else {
            out.push('&');
            rest = &tail[1..];
            continue;
        };
        match entity(&tail[1..semi]) {
            Some(c) => {
                out.push(c);
                rest = &tail[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => {
            let n = name.strip_prefix('#')?;
            let code = match n.strip_prefix('x').or_else(|| n.strip_prefix('X')) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => n.parse().ok()?,
            };
            char::from_u32(code)
        }
    }
}

/// Escapes text for an element's content.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_skip_longer_names_and_read_in_order() {
        let x = "<R><PartNumberMarker>0</PartNumberMarker><Part><PartNumber>1</PartNumber></Part>\
                 <Part>\n<PartNumber>2</PartNumber></Part><Parts/></R>";
        let parts = elements(x, "Part");
        assert_eq!(parts.len(), 2);
        assert_eq!(text(parts[1], "PartNumber").as_deref(), Some("2"));
        assert_eq!(text(x, "PartNumberMarker").as_deref(), Some("0"));
        assert_eq!(text(x, "Missing"), None);
    }

    #[test]
    fn unescape_handles_entities_and_leaves_junk() {
        assert_eq!(unescape("a&amp;b&lt;&#65;&#x42;&quot;"), "a&b<AB\"");
        assert_eq!(unescape("x & y &bogus; &#zz;"), "x & y &bogus; &#zz;");
        assert_eq!(unescape(&escape("<'&\">")), "<'&\">");
    }
}
