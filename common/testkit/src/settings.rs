//! The settings a process reads, against the ones `.env.example` lists: [`Recorder`] is a
//! settings source that notes every name asked of it, and [`documented`] reads the names
//! `.env.example` lists for a process (those under its heading and under the heading shared
//! by both), so a test can say that the two agree.

use std::collections::BTreeSet;
use std::sync::Mutex;

use engine::config::Source;

/// A settings source of fixed values that remembers every name asked of it.
pub struct Recorder {
    values: Vec<(String, String)>,
    asked: Mutex<BTreeSet<String>>,
}

impl Recorder {
    /// A source holding `values`.
    pub fn new(values: &[(&str, &str)]) -> Recorder {
        Recorder {
            values: values
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            asked: Mutex::new(BTreeSet::new()),
        }
    }

    /// Every name asked so far.
    pub fn asked(&self) -> BTreeSet<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Source for Recorder {
    fn get(&self, name: &str) -> Option<String> {
        self.asked.lock().unwrap().insert(name.to_owned());
        self.values
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

/// The heading in `.env.example` of the settings both processes read.
pub const BOTH: &str = "# === Both processes";
/// The heading of the API's settings.
pub const API: &str = "# === API";
/// The heading of the worker's settings.
pub const WORKER: &str = "# === Worker";

/// The names `.env.example` lists (as `NAME=` or `# NAME=`) under `heading` and under
/// [`BOTH`].
pub fn documented(heading: &str) -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.env.example");
    let text = std::fs::read_to_string(path).expect("read .env.example");
    let mut section = "";
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("# ===") {
            section = [BOTH, API, WORKER]
                .into_iter()
                .find(|h| line.starts_with(h))
                .unwrap_or_else(|| panic!("an unknown heading in .env.example: {line}"));
            continue;
        }
        if section != BOTH && section != heading {
            continue;
        }
        let setting = line.trim_start_matches('#').trim_start();
        if let Some((name, _)) = setting.split_once('=')
            && !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            out.insert(name.to_owned());
        }
    }
    out
}
