//! The shape of a team id (`ICCT-001`): a leaf that the registrations and the team kinds'
//! args both check against, so neither imports the other for it.

/// True for a well-formed team id: `PREFIX-NNN`, the prefix 1 to 16 letters or digits, the
/// number at least 3 digits.
pub fn is_team_id(s: &str) -> bool {
    let Some((prefix, number)) = s.split_once('-') else {
        return false;
    };
    (1..=16).contains(&prefix.len())
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric())
        && number.len() >= 3
        && number.len() <= 19
        && number.bytes().all(|b| b.is_ascii_digit())
}
