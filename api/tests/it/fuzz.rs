//! Every operation of the served spec, against the real `api` binary, with a NUL character
//! in each of its string inputs in turn (path and query parameters, every string of a JSON
//! body, every text field of a form): each answers 422 in the one error shape, never 500.
//! PostgreSQL refuses NUL in `text` and `jsonb`, so one that reaches a statement is a 500.

use reqwest::Method;
use serde_json::{Map, Value, json};
use testkit::TestDb;
use testkit::fixtures::admin_env;
use testkit::http::Client;
use testkit::process::Api;

/// What the spec says about one operation, and one input of it carrying NUL.
struct Case {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    body: Body,
    what: String,
}

enum Body {
    None,
    Json(Value),
    Form(Vec<(String, String)>, Vec<String>),
}

const NUL: &str = "x\u{0}y";

/// A value of `schema` with every string `"x"`; objects get only their required members
/// unless `all`.
fn sample(spec: &Value, schema: &Value, depth: usize) -> Value {
    sample_of(spec, schema, depth, true)
}

fn sample_of(spec: &Value, schema: &Value, depth: usize, all: bool) -> Value {
    let sample = |spec: &Value, schema: &Value, depth: usize| sample_of(spec, schema, depth, all);
    if depth > 8 {
        return Value::Null;
    }
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        return sample(spec, &spec["components"]["schemas"][name], depth + 1);
    }
    if let Some(all) = schema["allOf"].as_array() {
        let mut merged = Map::new();
        for s in all {
            if let Value::Object(m) = sample(spec, s, depth + 1) {
                merged.extend(m);
            }
        }
        return Value::Object(merged);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(first) = schema[key].as_array().and_then(|a| a.first()) {
            return sample(spec, first, depth + 1);
        }
    }
    if let Some(first) = schema["enum"].as_array().and_then(|a| a.first()) {
        return first.clone();
    }
    match schema["type"].as_str() {
        Some("string") if schema["format"] == "date-time" => json!("2026-01-01T00:00:00Z"),
        Some("string") => json!("x"),
        Some("integer") | Some("number") => json!(1),
        Some("boolean") => json!(true),
        Some("array") => json!([sample(spec, &schema["items"], depth + 1)]),
        _ => {
            let mut m = Map::new();
            if let Some(props) = schema["properties"].as_object() {
                let required = |k: &str| {
                    schema["required"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|x| x == k))
                };
                for (k, s) in props {
                    if all || required(k) {
                        m.insert(k.clone(), sample(spec, s, depth + 1));
                    }
                }
            } else {
                // A free-form object (job args): one string member.
                m.insert("k".into(), json!("x"));
            }
            Value::Object(m)
        }
    }
}

/// Set the string at `pointer` of `v` to NUL, taking what `v` lacks on the way from `full`.
fn set_along(v: &mut Value, full: &Value, pointer: &str) {
    let mut here = v;
    let mut there = full;
    for seg in pointer.split('/').skip(1) {
        there = match there {
            Value::Array(a) => &a[seg.parse::<usize>().unwrap()],
            other => &other[seg],
        };
        here = match here {
            Value::Array(a) => &mut a[seg.parse::<usize>().unwrap()],
            Value::Object(m) => m.entry(seg.to_owned()).or_insert_with(|| there.clone()),
            _ => unreachable!("a pointer from the full sample"),
        };
    }
    *here = json!(NUL);
}

/// JSON pointers of every string in `v`.
fn strings(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::String(_) => out.push(at),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings(item, format!("{at}/{i}"), out);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                strings(item, format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
}

/// One request per string input of each operation, that input carrying NUL.
fn cases(spec: &Value) -> Vec<Case> {
    let mut out = Vec::new();
    for (template, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let params: Vec<&Value> = op["parameters"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let is_string = |p: &Value| p["schema"]["type"] == "string";
            let path_with = |nul_in: Option<&str>| {
                let mut path = template.clone();
                for p in params.iter().filter(|p| p["in"] == "path") {
                    let name = p["name"].as_str().unwrap();
                    let value = match nul_in {
                        Some(n) if n == name => "x%00y",
                        _ if is_string(p) => "x",
                        _ => "1",
                    };
                    path = path.replace(&format!("{{{name}}}"), value);
                }
                path
            };
            let content = &op["requestBody"]["content"];
            let body = content
                .as_object()
                .and_then(|c| c.iter().next())
                .map(|(ct, c)| {
                    (
                        ct.clone(),
                        sample(spec, &c["schema"], 0),
                        c["schema"].clone(),
                    )
                });
            let base_body = || match &body {
                None => Body::None,
                Some((ct, v, _)) if ct.starts_with("multipart/") => form_of(spec, v, None),
                Some((_, v, _)) => Body::Json(v.clone()),
            };
            let mut push =
                |path: String, query: Vec<(String, String)>, body: Body, what: String| {
                    out.push(Case {
                        method: method.clone(),
                        path,
                        query,
                        body,
                        what: format!("{method} {template}: {what}"),
                    })
                };
            for p in params.iter().filter(|p| is_string(p)) {
                let name = p["name"].as_str().unwrap();
                match p["in"].as_str().unwrap() {
                    "path" => push(
                        path_with(Some(name)),
                        vec![],
                        base_body(),
                        format!("path {name}"),
                    ),
                    "query" => push(
                        path_with(None),
                        vec![(name.to_owned(), NUL.to_owned())],
                        base_body(),
                        format!("query {name}"),
                    ),
                    // Header values cannot carry NUL: hyper refuses them on both ends.
                    _ => {}
                }
            }
            match &body {
                Some((ct, v, _)) if ct.starts_with("multipart/") => {
                    let Body::Form(fields, _) = form_of(spec, v, None) else {
                        unreachable!()
                    };
                    for (name, _) in fields {
                        push(
                            path_with(None),
                            vec![],
                            form_of(spec, v, Some(&name)),
                            format!("form field {name}"),
                        );
                    }
                }
                Some((_, v, schema)) => {
                    // NUL in one member, the others only as many as the schema requires,
                    // so that no other member's refusal hides what NUL does.
                    let minimal = sample_of(spec, schema, 0, false);
                    let mut at = Vec::new();
                    strings(v, String::new(), &mut at);
                    for pointer in at {
                        let mut bad = minimal.clone();
                        set_along(&mut bad, v, &pointer);
                        push(
                            path_with(None),
                            vec![],
                            Body::Json(bad),
                            format!("body {pointer}"),
                        );
                    }
                }
                None => {}
            }
        }
    }
    out
}

/// The form of sample `v`: binary fields as files, the others as text, `nul_in` with NUL.
fn form_of(_spec: &Value, v: &Value, nul_in: Option<&str>) -> Body {
    let mut text = Vec::new();
    let mut files = Vec::new();
    for (k, item) in v.as_object().unwrap() {
        // poem-openapi describes an upload as a string of format binary; `sample` made it "x".
        if k == "logo" {
            files.push(k.clone());
            continue;
        }
        let value = match item {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let value = if nul_in == Some(k.as_str()) {
            NUL.to_owned()
        } else {
            value
        };
        text.push((k.clone(), value));
    }
    Body::Form(text, files)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nul_in_any_input_of_any_operation_is_a_422() {
    let db = TestDb::new().await;
    let mut env = vec![
        ("DATABASE_URL", db.url.as_str()),
        ("RATE_LIMIT_REQUESTS", "100000"),
    ];
    env.extend(admin_env());
    let api = Api::start(env!("CARGO_BIN_EXE_api"), &env).await;
    let admin: Client = api.admin().await;
    let spec = api.client().get("/openapi.json").send().await.json();
    let cases = cases(&spec);
    assert!(
        cases.len() > 40,
        "the spec has string inputs: {}",
        cases.len()
    );
    let mut wrong = Vec::new();
    for case in &cases {
        let mut path = case.path.clone();
        if !case.query.is_empty() {
            let q: Vec<String> = case
                .query
                .iter()
                .map(|(k, v)| format!("{k}={}", v.replace('\0', "%00")))
                .collect();
            path = format!("{path}?{}", q.join("&"));
        }
        let req = admin.request(case.method.clone(), &path);
        let req = match &case.body {
            Body::None => req,
            Body::Json(v) => req.json(v),
            Body::Form(text, files) => {
                let mut form = reqwest::multipart::Form::new();
                for (k, v) in text {
                    form = form.text(k.clone(), v.clone());
                }
                for k in files {
                    let part = reqwest::multipart::Part::bytes(testkit::fixtures::LOGO_PNG)
                        .file_name("logo.png")
                        .mime_str("image/png")
                        .unwrap();
                    form = form.part(k.clone(), part);
                }
                req.multipart(form)
            }
        };
        let resp = req.send().await;
        let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        if resp.status != 422 || body["error_code"] != "VALIDATION_FAILED" {
            wrong.push(format!("{} -> {} {}", case.what, resp.status, resp.text()));
        }
    }
    assert!(
        wrong.is_empty(),
        "not refused with 422:\n{}",
        wrong.join("\n")
    );
}
