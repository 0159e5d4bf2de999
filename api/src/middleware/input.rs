//! Control characters are refused at the edge (422), once for every operation: in the path
//! and the query (any control character), in JSON bodies (NUL and every C0 control but tab,
//! line feed and carriage return, in values and keys) and in the text fields of multipart
//! forms (the same). PostgreSQL refuses NUL in `text` and `\u0000` in `jsonb`, so a NUL that
//! reached a statement answered 500; the other controls make no sense in names, filters or
//! ids. Headers need no check: hyper refuses control characters in them.
//!
//! A JSON body is parsed here only when its text holds an escape that can spell a control
//! character (`\u`, `\b`, `\f`); raw control characters are not valid JSON and the
//! operation's own parsing refuses them.

use std::sync::Arc;

use poem::http::header::CONTENT_TYPE;
use poem::web::Multipart;
use poem::{Body, Endpoint, FromRequest, IntoResponse, Request, RequestBody, Response};
use serde_json::Value;

use crate::error::ApiError;

/// Answer 422 when the request's path, query, JSON body or form text holds a control
/// character that makes no sense there; otherwise call `ep` with the request unchanged.
pub async fn refuse_control_chars<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
) -> poem::Result<Response> {
    if let Some(c) = first_control(&percent_decode(req.uri().path()), char::is_control) {
        return Err(refused("the path", c).into());
    }
    if let Some(q) = req.uri().query()
        && let Some(c) = first_control(&percent_decode(q), char::is_control)
    {
        return Err(refused("the query", c).into());
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence == "application/json" || essence.ends_with("+json") {
        let bytes = req.take_body().into_bytes().await?;
        let suspicious = [&b"\\u"[..], b"\\b", b"\\f"]
            .iter()
            .any(|esc| bytes.windows(2).any(|w| w == *esc));
        if suspicious
            && let Ok(value) = serde_json::from_slice::<Value>(&bytes)
            && let Some((at, c)) = json_control(&value, String::new())
        {
            let at = if at.is_empty() { "/".into() } else { at };
            return Err(refused(&format!("the body at {at}"), c).into());
        }
        req.set_body(bytes);
    } else if essence == "multipart/form-data" {
        let bytes = req.take_body().into_bytes().await?;
        if let Some((name, c)) = form_control(&req, bytes.to_vec()).await {
            return Err(refused(&format!("the form field {name:?}"), c).into());
        }
        req.set_body(bytes);
    }
    ep.call(req).await.map(IntoResponse::into_response)
}

/// 422 saying where the character was.
fn refused(place: &str, c: char) -> ApiError {
    ApiError::validation(format!(
        "{place} contains the control character U+{:04X}",
        u32::from(c)
    ))
}

/// Control characters of text: NUL and the C0 controls but tab, line feed and return.
fn text_control(c: char) -> bool {
    c.is_ascii_control() && !matches!(c, '\t' | '\n' | '\r') && c != '\u{7f}'
}

fn first_control(s: &str, bad: impl Fn(char) -> bool) -> Option<char> {
    s.chars().find(|c| bad(*c))
}

/// The first control character in a string or key of `v`, with its JSON pointer.
fn json_control(v: &Value, at: String) -> Option<(String, char)> {
    match v {
        Value::String(s) => first_control(s, text_control).map(|c| (at, c)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| json_control(item, format!("{at}/{i}"))),
        Value::Object(map) => map.iter().find_map(|(k, item)| {
            let here = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
            match first_control(k, text_control) {
                Some(c) => Some((here, c)),
                None => json_control(item, here),
            }
        }),
        _ => None,
    }
}

/// The first text field (a part without a file name) of the form in `bytes` that holds a
/// control character. A form that does not parse is left to the operation to refuse.
async fn form_control(req: &Request, bytes: Vec<u8>) -> Option<(String, char)> {
    let mut body = RequestBody::new(Body::from(bytes));
    let mut form = Multipart::from_request(req, &mut body).await.ok()?;
    while let Ok(Some(field)) = form.next_field().await {
        if field.file_name().is_some() {
            continue;
        }
        let name = field.name().unwrap_or_default().to_owned();
        let Ok(text) = field.text().await else {
            continue;
        };
        if let Some(c) = first_control(&text, text_control) {
            return Some((name, c));
        }
    }
    None
}

/// `%XX` escapes decoded (invalid ones kept as they are), as text.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_decode() {
        assert_eq!(percent_decode("a%00b"), "a\0b");
        assert_eq!(percent_decode("%41%4a%"), "AJ%");
        assert_eq!(percent_decode("%zz%0"), "%zz%0");
    }

    #[test]
    fn controls_are_found_in_values_and_keys() {
        let v = serde_json::json!({"a": ["ok\n", "tab\t"], "b": {"c\u{0}": 1}});
        assert_eq!(
            json_control(&v, String::new()),
            Some(("/b/c\u{0}".into(), '\0'))
        );
        let v = serde_json::json!({"x": [1, "bell\u{7}"]});
        assert_eq!(
            json_control(&v, String::new()),
            Some(("/x/1".into(), '\u{7}'))
        );
        assert_eq!(
            json_control(&serde_json::json!({"fine": "é\r\n"}), String::new()),
            None
        );
    }
}
