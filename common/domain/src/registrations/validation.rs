//! The checks of a registration before anything is written: what a registration form
//! submits ([`Submission`]), every rule on it, and the one value that passes them
//! ([`NewRegistration`]), with the fingerprint that tells two requests apart for idempotency.
//!
//! Every problem is reported at once, keyed by the submitted field's name (`team_name`,
//! `players[2].phone`): the API hands the map to the client as it is.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::{MAX_LOGO_BYTES, MAX_PLAYERS, Player};

/// What was wrong with a submission: field name to message, every field at once.
pub type FieldErrors = BTreeMap<String, String>;

/// A registration as submitted, every part optional and unchecked.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// 3 to 80 characters.
    pub team_name: Option<String>,
    /// 3 to 80 characters.
    pub church_name: Option<String>,
    /// 3 to 50 characters.
    pub captain_name: Option<String>,
    /// 3 to 50 characters.
    pub coach_name: Option<String>,
    /// 10 digits.
    pub captain_phone: Option<String>,
    /// 10 digits.
    pub captain_whatsapp: Option<String>,
    /// An email address.
    pub captain_email: Option<String>,
    /// A JSON array of 1 to [`MAX_PLAYERS`] `{"name", "role", "phone"}`.
    pub players: Option<String>,
    /// PNG or JPEG (judged by its bytes), at most [`MAX_LOGO_BYTES`].
    pub logo: Option<Vec<u8>>,
}

/// A registration that passed every check of [`Submission::validate`], the only way to
/// make one: the use-case ([`super::register`]) can trust every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRegistration {
    pub(super) team_name: String,
    pub(super) church_name: String,
    pub(super) captain_name: String,
    pub(super) coach_name: String,
    pub(super) captain_phone: String,
    pub(super) captain_whatsapp: String,
    pub(super) captain_email: String,
    pub(super) players: Vec<Player>,
    pub(super) logo: Vec<u8>,
    pub(super) logo_type: &'static str,
    pub(super) logo_sha256: Vec<u8>,
}

/// An idempotency key: 1 to [`MAX_KEY_CHARS`] visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

/// Longest idempotency key.
pub const MAX_KEY_CHARS: usize = 255;

impl IdempotencyKey {
    /// The key `key`, or why it is not one.
    pub fn parse(key: String) -> Result<Self, String> {
        if key.is_empty() || key.len() > MAX_KEY_CHARS || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "must be 1 to {MAX_KEY_CHARS} visible ASCII characters"
            ));
        }
        Ok(Self(key))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Submission {
    /// Check every part, collecting every problem.
    pub fn validate(self) -> Result<NewRegistration, FieldErrors> {
        let mut errors = FieldErrors::new();
        let mut text = |field: &'static str, value: Option<String>, min: usize, max: usize| {
            let value = value.map(|v| v.trim().to_owned()).unwrap_or_default();
            let n = value.chars().count();
            if n < min || n > max || value.chars().any(char::is_control) {
                errors.insert(
                    field.to_owned(),
                    format!("must be {min} to {max} characters"),
                );
            }
            value
        };
        let team_name = text("team_name", self.team_name, 3, 80);
        let church_name = text("church_name", self.church_name, 3, 80);
        let captain_name = text("captain_name", self.captain_name, 3, 50);
        let coach_name = text("coach_name", self.coach_name, 3, 50);
        let mut digits = |field: &'static str, value: Option<String>| {
            let value = value.map(|v| v.trim().to_owned()).unwrap_or_default();
            if !is_phone(&value) {
                errors.insert(field.to_owned(), "must be 10 digits".to_owned());
            }
            value
        };
        let captain_phone = digits("captain_phone", self.captain_phone);
        let captain_whatsapp = digits("captain_whatsapp", self.captain_whatsapp);
        let captain_email = self
            .captain_email
            .map(|v| v.trim().to_owned())
            .unwrap_or_default();
        if !is_email(&captain_email) {
            errors.insert(
                "captain_email".to_owned(),
                "must be an email address such as name@example.com".to_owned(),
            );
        }
        let players = parse_players(self.players.as_deref(), &mut errors);
        let (logo, logo_type) = check_logo(self.logo, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let logo_sha256 = Sha256::digest(&logo).to_vec();
        Ok(NewRegistration {
            team_name,
            church_name,
            captain_name,
            coach_name,
            captain_phone,
            captain_whatsapp,
            captain_email,
            players,
            logo,
            logo_type: logo_type.unwrap_or("image/png"),
            logo_sha256,
        })
    }
}

impl NewRegistration {
    /// SHA-256 of the canonical request: the checked values as a JSON object with sorted
    /// keys, the logo by its digest. Whitespace trimmed away or a different file name makes
    /// the same request. Stored with an idempotency key, so a change here makes every
    /// repeat within IDEMPOTENCY_TTL of a request before the change look like another one.
    pub(super) fn fingerprint(&self) -> Vec<u8> {
        let hex: String = self
            .logo_sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let canonical = serde_json::json!({
            "team_name": self.team_name,
            "church_name": self.church_name,
            "captain_name": self.captain_name,
            "coach_name": self.coach_name,
            "captain_phone": self.captain_phone,
            "captain_whatsapp": self.captain_whatsapp,
            "captain_email": self.captain_email,
            "players": self.players,
            "logo_sha256": hex,
            "logo_type": self.logo_type,
        });
        Sha256::digest(canonical.to_string().as_bytes()).to_vec()
    }
}

/// `image/png` or `image/jpeg` from the file's signature, whatever its name says.
fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else {
        None
    }
}

fn is_phone(s: &str) -> bool {
    s.len() == 10 && s.bytes().all(|b| b.is_ascii_digit())
}

/// A practical address check: `local@domain`, the local part of atext and dots, the domain
/// of at least two dot-separated labels of letters, digits and inner hyphens.
fn is_email(s: &str) -> bool {
    if s.len() > 254 {
        return false;
    }
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    local_ok && domain_ok
}

/// The players part: a JSON array of 1 to 20 `{name, role, phone}`.
fn parse_players(raw: Option<&str>, errors: &mut FieldErrors) -> Vec<Player> {
    let Some(raw) = raw else {
        errors.insert("players".into(), "is required".into());
        return Vec::new();
    };
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(raw) else {
        errors.insert(
            "players".into(),
            "must be a JSON array of {\"name\", \"role\", \"phone\"}".into(),
        );
        return Vec::new();
    };
    if items.is_empty() || items.len() > MAX_PLAYERS {
        errors.insert(
            "players".into(),
            format!("must list 1 to {MAX_PLAYERS} players"),
        );
        return Vec::new();
    }
    let mut players = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_str())
                .map(|s| s.trim().to_owned())
        };
        let mut bad = |name: &str, message: &str| {
            errors.insert(format!("players[{i}].{name}"), message.to_owned());
        };
        let name = field("name").unwrap_or_default();
        let role = field("role").unwrap_or_default();
        let phone = field("phone").unwrap_or_default();
        for (n, v) in [("name", &name), ("role", &role)] {
            let chars = v.chars().count();
            if !(1..=50).contains(&chars) || v.chars().any(char::is_control) {
                bad(n, "must be 1 to 50 characters");
            }
        }
        if !is_phone(&phone) {
            bad("phone", "must be 10 digits");
        }
        players.push(Player { name, role, phone });
    }
    players
}

/// The logo part: its bytes and type, judged from the bytes.
fn check_logo(logo: Option<Vec<u8>>, errors: &mut FieldErrors) -> (Vec<u8>, Option<&'static str>) {
    let Some(bytes) = logo else {
        errors.insert("logo".into(), "is required".into());
        return (Vec::new(), None);
    };
    if bytes.len() > MAX_LOGO_BYTES {
        errors.insert(
            "logo".into(),
            format!("must be at most {MAX_LOGO_BYTES} bytes"),
        );
        return (Vec::new(), None);
    }
    let kind = sniff_image(&bytes);
    if kind.is_none() {
        errors.insert(
            "logo".into(),
            "must be a PNG or JPEG image (judged by its content)".into(),
        );
    }
    (bytes, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_phones() {
        for ok in ["a@b.co", "first.last+tag@sub.example.org", "x_y@a-b.in"] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "", "a", "a@b", "@b.co", "a@.co", "a@b..co", ".a@b.co", "a b@c.co", "a@-b.co",
            "a@b.co ", "a@@b.co",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
        assert!(is_phone("0123456789"));
        assert!(!is_phone("012345678"));
        assert!(!is_phone("01234567890"));
        assert!(!is_phone("01234 6789"));
    }

    #[test]
    fn images_are_judged_by_their_bytes() {
        assert_eq!(sniff_image(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(sniff_image(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff_image(b"\x7fELF\x02\x01"), None);
        assert_eq!(sniff_image(b"MZ\x90\0"), None);
        assert_eq!(sniff_image(b""), None);
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse("k-1".into()).is_ok());
        let long = "k".repeat(MAX_KEY_CHARS);
        assert_eq!(IdempotencyKey::parse(long.clone()).unwrap().as_str(), long);
        for bad in ["", "a b", "ключ", &"k".repeat(MAX_KEY_CHARS + 1)] {
            assert!(IdempotencyKey::parse(bad.into()).is_err(), "{bad}");
        }
    }
}
