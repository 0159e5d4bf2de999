//! The team the registration tests register (Harbour Lions of St Mark's Church, captained by
//! Cap Tain, two players), as the public form's fields, as a multipart form for a real
//! listener, or inserted straight into the database; its logo; the password that passes the
//! policy; the admin the started `api` creates; the signing key of the apps the tests start.

use domain::registrations::{self as reg, NewLogo, NewTeam, Player};
use serde_json::json;

use crate::TestDb;

/// A real 1×1 RGBA PNG (signature, IHDR, IDAT, IEND with their CRCs): the team's logo.
pub const LOGO_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x90, 0xcf, 0xdf, 0xf2,
    0x1f, 0x00, 0x04, 0x35, 0x02, 0x42, 0xa2, 0x12, 0x85, 0xcb, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// The team's name.
pub const TEAM_NAME: &str = "Harbour Lions";

/// A password that passes the policy.
pub const PASSWORD: &str = "correct horse battery staple";

/// The `SECRET_KEY` of the apps the tests start (a test's own: no deployment has it), so a
/// test can sign the tokens it needs.
pub const SECRET_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// The admin a started `api` creates (with [`PASSWORD`]), see [`admin_env`].
pub const ADMIN: &str = "root";

/// The settings that make the `api` create [`ADMIN`] at start-up.
pub fn admin_env() -> [(&'static str, &'static str); 2] {
    [("ADMIN_USERNAME", ADMIN), ("ADMIN_PASSWORD", PASSWORD)]
}

/// The team's players: (name, role, phone).
pub const PLAYERS: [(&str, &str, &str); 2] = [
    ("Ann Bowler", "bowler", "9000000001"),
    ("Ben Batter", "batter", "9000000002"),
];

/// The text fields of the registration form for the team, named `team_name` (the players as
/// the JSON list the form takes).
pub fn form_fields(team_name: &str) -> Vec<(&'static str, String)> {
    let players: Vec<_> = PLAYERS
        .iter()
        .map(|(name, role, phone)| json!({"name": name, "role": role, "phone": phone}))
        .collect();
    vec![
        ("team_name", team_name.to_owned()),
        ("church_name", "St Mark's Church".into()),
        ("captain_name", "Cap Tain".into()),
        ("coach_name", "Co Ach".into()),
        ("captain_phone", "9876543210".into()),
        ("captain_whatsapp", "9876543211".into()),
        ("captain_email", "captain@example.com".into()),
        ("players", serde_json::Value::from(players).to_string()),
    ]
}

/// The registration form for the team, its logo `lions.png`, as multipart/form-data.
pub fn registration_form() -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new();
    for (name, value) in form_fields(TEAM_NAME) {
        form = form.text(name, value);
    }
    let logo = reqwest::multipart::Part::bytes(LOGO_PNG)
        .file_name("lions.png")
        .mime_str("image/png")
        .expect("a valid content type");
    form.part("logo", logo)
}

/// Insert the team, named `team_name`, with its logo bytes straight into the database, as a
/// registration does; returns its team id (`ICCT-001` for the first).
pub async fn insert_team(db: &TestDb, team_name: &str) -> String {
    let fields = form_fields(team_name);
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .expect("a field of the form")
    };
    let players: Vec<Player> = PLAYERS
        .iter()
        .map(|(name, role, phone)| Player {
            name: (*name).into(),
            role: (*role).into(),
            phone: (*phone).into(),
        })
        .collect();
    reg::insert_team(
        &db.conn().await,
        "ICCT",
        &NewTeam {
            team_name,
            church_name: field("church_name"),
            captain_name: field("captain_name"),
            coach_name: field("coach_name"),
            captain_phone: field("captain_phone"),
            captain_whatsapp: field("captain_whatsapp"),
            captain_email: field("captain_email"),
            players: &players,
            logo: NewLogo {
                content_type: "image/png",
                bytes: LOGO_PNG,
                sha256: &[0; 32],
            },
            request_id: None,
        },
    )
    .await
    .expect("insert the team")
    .team_id
}
