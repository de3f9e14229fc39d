//! The JSON Schema of policy files (`chaos-agent schema`, committed as
//! docs/policy.schema.json), derived from the raw serde model in `raw.rs`:
//! a field added there is in the schema at once, with its doc comment as
//! the description. Editors use it to complete and check policy files
//! (`# yaml-language-server: $schema=...` on a file's first line).
//!
//! The schema says what a schema can say: the shape of every single value
//! (pattern, enum, range), list lengths, unknown fields, and which fields go
//! together (exactly one of `network` and `syscall`, one action, one target,
//! one probe kind; `unit` or `cgroup`). `validate` stays the judge: what
//! spans values (a port range in order, host bits of a prefix, key counts,
//! duplicate names, syscall names of this architecture, latency + jitter at
//! most 10 s, durations at most 365 days) only it checks.
//!
//! Draft-07, which editors' YAML and JSON language servers read best.

use std::borrow::Cow;

use schemars::{
    JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings, json_schema,
    transform::RecursiveTransform,
};
use serde_json::{Value, json};

use super::{
    raw::{
        API_VERSION, ApiVersionK, BurstK, CgroupK, CidrK, CommK, CountK, DirectionK, DurationK,
        ErrnoK, HttpStatusK, InterfaceK, KIND, KindK, LeaseK, List, ModeK, NameK, NetnsK, PercentK,
        PidK, PortK, PortRangeK, PositiveDurationK, ProtocolK, RateK, RawPolicy, Scalar,
        ScalarKind, SyscallNameK, UnitK,
    },
    schema_rules::port,
    values,
};

/// The schema of a policy file, as `chaos-agent schema` prints it (pretty
/// JSON, one trailing newline).
pub fn json_schema() -> String {
    let schema = settings()
        .into_generator()
        .into_root_schema_for::<RawPolicy>();
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema is JSON");
    text.push('\n');
    text
}

fn settings() -> SchemaSettings {
    let mut settings = SchemaSettings::draft07();
    // Before draft-07's own transforms, which wrap a `$ref` that has a
    // description in `allOf`.
    settings
        .transforms
        .insert(0, Box::new(RecursiveTransform(tidy)));
    settings
}

/// Descriptions on one line (doc comments wrap; an editor's hover does
/// not), and optional fields without `null`: leaving a field out is the
/// way to say nothing (the loader reads `startAfter: ~` as left out too,
/// but an editor should not offer it).
fn tidy(schema: &mut Schema) {
    if let Some(Value::String(d)) = schema.get_mut("description") {
        *d = d.replace('\n', " ");
    }
    if let Some(Value::Array(types)) = schema.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            schema.insert("type".into(), only);
        }
    }
    let nullable = schema
        .get("anyOf")
        .and_then(Value::as_array)
        .filter(|any| any.len() == 2 && any[1] == json!({ "type": "null" }))
        .map(|any| any[0].clone());
    if let Some(Value::Object(inner)) = nullable {
        schema.remove("anyOf");
        for (k, v) in inner {
            schema.insert(k, v);
        }
    }
}

// Regular expressions, in the dialect JSON Schema uses (ECMA-262) and that
// the Rust `regex` crate reads the same way. Each follows the parser it
// stands for in `values.rs`; the tests below hold them together.

/// One humantime item: a number and a unit (`250ms`, `1.5h`).
macro_rules! duration_item {
    () => {
        concat!(
            r"[0-9]+(\.[0-9]+)?\s*",
            "(nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|",
            "minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|",
            r"weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)\s*"
        )
    };
}

/// Characters `char::is_control` refuses (C0, DEL and C1).
macro_rules! control {
    () => {
        r"\u0000-\u001f\u007f-\u009f"
    };
}

const DURATION: &str = concat!(r"^\s*(0|(", duration_item!(), r")+)\s*$");
/// Some digit other than 0: with [`DURATION`] or [`RATE`], more than zero.
const NONZERO: &str = "[1-9]";
const PERCENT: &str = r"^\s*0*(100(\.0+)?|[0-9]{1,2}(\.[0-9]+)?)\s*%?\s*$";
const PORT_RANGE: &str = concat!(r"^\s*", port!(), r"\s*(-\s*", port!(), r"\s*)?$");
const PORT: &str = concat!(r"^\s*", port!(), r"\s*$");
const IPV4_OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
const RATE: &str = r"^\s*[0-9]+(\.[0-9]+)?\s*([kKmMgGtT]?[bB][iI][tT]|[kKmMgG]?[bB][pP][sS])\s*$";
/// 1 to 1000000, decimals allowed (`loss.burst`).
const BURST: &str = r"^\s*0*([1-9][0-9]{0,5}(\.[0-9]+)?|1000000(\.0+)?)\s*$";
const ERRNO_NUMBER: &str = r"^\s*0*([1-9][0-9]{0,2}|[1-3][0-9]{3}|40[0-8][0-9]|409[0-5])\s*$";

fn cidr() -> String {
    let v4 = format!(r"{IPV4_OCTET}(\.{IPV4_OCTET}){{3}}(/(3[0-2]|[12]?[0-9]))?");
    // IPv6 in all its spellings is beyond a readable pattern: hex digits,
    // colons (at least one) and dots; the parser judges the rest.
    let v6 = r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?";
    format!(r"^\s*({v4}|{v6})\s*$")
}

/// What a scalar kind of `raw.rs` looks like in the schema.
pub(crate) trait KindSchema: ScalarKind {
    /// Its name under `definitions`.
    const NAME: &'static str;
    fn schema() -> Schema;
}

/// A number in a range, or the same as a string matching `pattern` (the
/// loader reads `30` and `"30"` alike).
fn number_or_string(kind: &str, min: u64, max: Option<u64>, pattern: &str) -> Schema {
    let mut number = json!({ "type": kind, "minimum": min });
    if let Some(max) = max {
        number["maximum"] = max.into();
    }
    json_schema!({
        "anyOf": [number, { "type": "string", "pattern": pattern }]
    })
}

macro_rules! kind_schemas {
    ($($kind:ty: $name:literal => $schema:expr;)*) => {$(
        impl KindSchema for $kind {
            const NAME: &'static str = $name;
            fn schema() -> Schema {
                $schema
            }
        }
    )*};
}

kind_schemas! {
    ApiVersionK: "ApiVersion" => json_schema!({ "type": "string", "const": API_VERSION });
    KindK: "Kind" => json_schema!({ "type": "string", "const": KIND });
    NameK: "Name" => json_schema!({ "type": "string", "pattern": "^[a-z0-9-]{1,63}$" });
    PercentK: "Percent" => number_or_string("number", 0, Some(100), PERCENT);
    PortRangeK: "PortOrRange" => number_or_string("integer", 1, Some(65535), PORT_RANGE);
    PortK: "Port" => number_or_string("integer", 1, Some(65535), PORT);
    CidrK: "Cidr" => json_schema!({ "type": "string", "pattern": cidr() });
    ProtocolK: "Protocol" => json_schema!({
        "type": "string",
        "enum": ["tcp", "udp", "icmp", "any"]
    });
    DirectionK: "Direction" => json_schema!({
        "type": "string",
        "enum": ["egress", "ingress", "both"]
    });
    // A YAML `0` reads as "0", which humantime takes.
    DurationK: "Duration" => json_schema!({
        "anyOf": [{ "type": "string", "pattern": DURATION }, { "const": 0 }]
    });
    PositiveDurationK: "PositiveDuration" => json_schema!({
        "type": "string",
        "pattern": DURATION,
        "allOf": [{ "pattern": NONZERO }]
    });
    // At least 1s: a schema pattern cannot say so; `validate` does.
    LeaseK: "Lease" => json_schema!({
        "type": "string",
        "pattern": DURATION,
        "allOf": [{ "pattern": NONZERO }],
        "description": "at least 1s, such as 2s or 10s"
    });
    RateK: "Rate" => json_schema!({
        "type": "string",
        "pattern": RATE,
        "allOf": [{ "pattern": NONZERO }]
    });
    ErrnoK: "Errno" => json_schema!({
        "anyOf": [
            { "type": "integer", "minimum": 1, "maximum": values::MAX_ERRNO },
            { "type": "string", "pattern": ERRNO_NUMBER },
            { "type": "string", "enum": values::errno_names().collect::<Vec<_>>() }
        ]
    });
    InterfaceK: "Interface" => json_schema!({
        "type": "string",
        // Printable ASCII but '/' and ':'.
        "pattern": "^[!-.0-9;-~]{1,15}$",
        "not": { "enum": [".", ".."] }
    });
    NetnsK: "Netns" => json_schema!({
        "type": "string",
        "pattern": "^[!-.0-~]{1,255}$",
        "not": { "enum": [".", ".."] }
    });
    UnitK: "Unit" => json_schema!({
        "type": "string",
        "maxLength": 255,
        "pattern": r"^[A-Za-z0-9:_.\\@-]+\.(service|scope|slice|socket|mount|swap)$"
    });
    CgroupK: "Cgroup" => json_schema!({
        "type": "string",
        "maxLength": 4096,
        "pattern": concat!("^/[^", control!(), "]*$"),
        "not": { "pattern": r"(^|/)\.\.?(/|$)" }
    });
    SyscallNameK: "SyscallName" => json_schema!({ "type": "string", "pattern": "^[a-z0-9_]{1,64}$" });
    CommK: "Comm" => json_schema!({
        "type": "string",
        "pattern": concat!("^[^", control!(), "]{1,15}$")
    });
    PidK: "Pid" => number_or_string(
        "integer", 2, Some(u32::MAX.into()), r"^\s*0*([2-9]|[1-9][0-9]{1,9})\s*$"
    );
    HttpStatusK: "HttpStatus" => number_or_string(
        "integer", 100, Some(599), r"^\s*[1-5][0-9]{2}\s*$"
    );
    CountK: "Count" => number_or_string("integer", 1, None, r"^\s*0*[1-9][0-9]{0,19}\s*$");
    ModeK: "Mode" => json_schema!({ "type": "string", "enum": ["enforce", "shadow"] });
    BurstK: "Burst" => number_or_string("number", 1, Some(1_000_000), BURST);
}

impl<K: KindSchema> JsonSchema for Scalar<K> {
    fn schema_name() -> Cow<'static, str> {
        K::NAME.into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let mut schema = K::schema();
        schema.insert("description".into(), K::EXPECTED.into());
        schema
    }
}

impl<T: JsonSchema, const MIN: usize, const MAX: usize> JsonSchema for List<T, MIN, MAX> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("List_of_{}", T::schema_name()).into()
    }

    fn schema_id() -> Cow<'static, str> {
        format!("List<{}, {MIN}, {MAX}>", T::schema_id()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = json_schema!({
            "type": "array",
            "items": generator.subschema_for::<T>(),
            "maxItems": MAX
        });
        if MIN > 0 {
            schema.insert("minItems".into(), MIN.into());
        }
        schema
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::policy::load_str;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn schema() -> Value {
        serde_json::from_str(&json_schema()).unwrap()
    }

    fn validator() -> jsonschema::Validator {
        jsonschema::validator_for(&schema()).unwrap()
    }

    /// What the schema says of a YAML document: `Err` lists its complaints.
    fn check(v: &jsonschema::Validator, yaml: &str) -> Result<(), String> {
        let doc: Value =
            serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("not YAML: {e}\n{yaml}"));
        let errors: Vec<String> = v
            .iter_errors(&doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    #[test]
    fn the_committed_schema_is_current() {
        let path = repo().join("docs/policy.schema.json");
        // Compared as JSON values: the order of keys may follow serde_json's
        // features, which other crates of a build can switch on.
        let committed: Option<Value> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        assert!(
            committed.as_ref() == Some(&schema()),
            "docs/policy.schema.json differs from what `chaos-agent schema` prints now; \
             regenerate it with `./x schema` (or `cargo run -p chaos-agent -- schema > \
             docs/policy.schema.json`) and commit it"
        );
    }

    /// docs/policy.md names every field the schema (the raw model) has, so
    /// the reference cannot fall behind the model.
    #[test]
    fn docs_policy_names_every_field() {
        fn fields(v: &Value, out: &mut std::collections::BTreeSet<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::Object(props)) = m.get("properties") {
                        out.extend(props.keys().cloned());
                    }
                    m.values().for_each(|x| fields(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| fields(x, out)),
                _ => {}
            }
        }
        let mut all = std::collections::BTreeSet::new();
        fields(&schema(), &mut all);
        let doc = std::fs::read_to_string(repo().join("docs/policy.md")).unwrap();
        let missing: Vec<&String> = all
            .iter()
            .filter(|f| !doc.contains(&format!("{f}`")) && !doc.contains(&format!("{f}:")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/policy.md does not describe {missing:?}"
        );
        assert!(all.len() > 30, "{all:?}");
    }

    #[test]
    fn the_schema_is_valid_draft_07() {
        let s = schema();
        assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
        jsonschema::meta::validate(&s).unwrap();
        assert_eq!(s["additionalProperties"], false);
        for (name, def) in s["definitions"].as_object().unwrap() {
            if def["type"] == "object" {
                assert_eq!(def["additionalProperties"], false, "{name}");
            }
        }
    }

    /// The examples in policies/ and the one at the top of docs/policy.md
    /// pass the schema, and `validate` (their own tests check the latter).
    #[test]
    fn shipped_examples_pass_the_schema() {
        let v = validator();
        let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("policies"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        assert!(files.len() >= 7, "{files:?}");
        for path in &files {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(
                text.starts_with("# yaml-language-server: $schema=../docs/policy.schema.json\n"),
                "{}: the first line names the schema for editors",
                path.display()
            );
            if let Err(e) = check(&v, &text) {
                panic!("{}: {e}", path.display());
            }
            load_str(&path.display().to_string(), &text).unwrap();
        }
        let doc = std::fs::read_to_string(repo().join("docs/policy.md")).unwrap();
        let (_, rest) = doc.split_once("```yaml\n").expect("a yaml block");
        let (example, _) = rest.split_once("```").expect("its end");
        check(&v, example).unwrap();
    }

    /// Files `validate` refuses for a reason a schema can express are
    /// refused by the schema too.
    #[test]
    fn the_schema_refuses_what_validate_refuses() {
        let v = validator();
        let good = "apiVersion: chaos-agent/v1
kind: FaultPolicy
metadata:
  name: t
spec:
  duration: 30s
  abortWhen:
    probe: { tcp: 127.0.0.1:5432 }
  faults:
    - name: f
      network:
        interface: eth0
        direction: egress
        match: { protocol: tcp, dstPorts: [5432], unit: db.service }
        loss: { percent: 30 }
    - name: s
      syscall:
        names: [connect]
        errno: ECONNREFUSED
        target: { pid: 42 }
";
        check(&v, good).unwrap();
        load_str("good", good).unwrap();
        let cases = [
            (
                "unknown field",
                "direction: egress",
                "direction: egress\n        los: { percent: 1 }",
            ),
            ("bad enum", "direction: egress", "direction: sideways"),
            ("percent 250", "percent: 30", "percent: 250"),
            ("percent 250%", "percent: 30", "percent: \"250%\""),
            ("port 70000", "dstPorts: [5432]", "dstPorts: [70000]"),
            (
                "port range 70000",
                "dstPorts: [5432]",
                "dstPorts: [\"1-70000\"]",
            ),
            (
                "two actions",
                "loss: { percent: 30 }",
                "loss: { percent: 30 }\n        corrupt: { percent: 1 }",
            ),
            ("no action", "loss: { percent: 30 }", ""),
            ("missing duration", "  duration: 30s\n", ""),
            ("zero duration", "duration: 30s", "duration: 0s"),
            ("duration without unit", "duration: 30s", "duration: 30"),
            ("bad name", "name: t", "name: T"),
            ("wrong kind", "kind: FaultPolicy", "kind: Policy"),
            (
                "unit and cgroup",
                "unit: db.service",
                "unit: db.service, cgroup: /x",
            ),
            (
                "two probe kinds",
                "tcp: 127.0.0.1:5432",
                "tcp: 127.0.0.1:5432, http: \"http://x/\"",
            ),
            (
                "expectStatus with tcp",
                "tcp: 127.0.0.1:5432",
                "tcp: 127.0.0.1:5432, expectStatus: 200",
            ),
            (
                "bad probe address",
                "tcp: 127.0.0.1:5432",
                "tcp: \"127.0.0.1\"",
            ),
            (
                "two targets",
                "target: { pid: 42 }",
                "target: { pid: 42, comm: x }",
            ),
            ("no target", "target: { pid: 42 }", "target: {}"),
            ("pid 1", "target: { pid: 42 }", "target: { pid: 1 }"),
            ("unknown errno", "errno: ECONNREFUSED", "errno: ECONREFUSED"),
            ("errno 4096", "errno: ECONNREFUSED", "errno: 4096"),
            (
                "network and syscall",
                "      syscall:\n",
                "      network: { interface: eth0, loss: { percent: 1 } }\n      syscall:\n",
            ),
            ("bad cidr", "dstPorts: [5432]", "dstCidrs: [10.0.0.300/8]"),
            ("bad interface", "interface: eth0", "interface: eth0/1"),
        ];
        for (what, from, to) in cases {
            assert!(
                good.contains(from),
                "{what}: {from:?} is not in the document"
            );
            let bad = good.replacen(from, to, 1);
            assert!(
                load_str(what, &bad).is_err(),
                "{what}: validate accepts\n{bad}"
            );
            let why = check(&v, &bad).expect_err(&format!("{what}: the schema accepts\n{bad}"));
            if std::env::var_os("CHAOS_SCHEMA_VERBOSE").is_some() {
                eprintln!("{what}:\n{why}\n");
            }
        }
        let no_faults = "apiVersion: chaos-agent/v1
kind: FaultPolicy
metadata: { name: t }
spec: { duration: 30s, faults: [] }
";
        assert!(load_str("no faults", no_faults).is_err());
        assert!(check(&v, no_faults).is_err());
    }

    /// Whether the schema of kind `K` accepts `value`.
    fn accepts<K: KindSchema>(value: &Value) -> bool {
        let schema = settings()
            .into_generator()
            .into_root_schema_for::<Scalar<K>>();
        jsonschema::is_valid(&schema.to_value(), value)
    }

    /// The schema of `K` and its parser agree on every sample: strings, and
    /// numbers as the loader hands them to the parser.
    #[track_caller]
    fn agree<K: KindSchema>(strings: &[&str], numbers: &[Value]) {
        let mut wrong = Vec::new();
        for s in strings {
            let (parser, schema) = (K::parse(s).is_ok(), accepts::<K>(&json!(s)));
            if parser != schema {
                wrong.push(format!("{s:?}: parser {parser}, schema {schema}"));
            }
        }
        for n in numbers {
            let text = match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => u.to_string(),
                (None, Some(i), _) => i.to_string(),
                (None, None, Some(f)) => format!("{f:?}"),
                _ => unreachable!(),
            };
            let (parser, schema) = (K::parse(&text).is_ok(), accepts::<K>(n));
            if parser != schema {
                wrong.push(format!("{n}: parser {parser}, schema {schema}"));
            }
        }
        assert!(wrong.is_empty(), "{}: {wrong:#?}", K::NAME);
    }

    #[test]
    fn every_kind_agrees_with_its_parser() {
        agree::<NameK>(
            &[
                "db",
                "a-1",
                &"a".repeat(63),
                &"a".repeat(64),
                "A",
                "a_b",
                "",
            ],
            &[],
        );
        agree::<PercentK>(
            &[
                "30", "30%", " 30 % ", "0.5", "0", "100", "100.0", "007", "100.01", "150", "-1",
                "abc", "%", "nan", "1e2", ".5", "5.", "",
            ],
            &[
                json!(30),
                json!(0.5),
                json!(100),
                json!(150),
                json!(-1),
                json!(100.5),
            ],
        );
        agree::<PortRangeK>(
            &[
                "80",
                " 80 ",
                "1",
                "65535",
                "65536",
                "70000",
                "0",
                "6000-6100",
                "1-65535",
                "1 - 2",
                "1-",
                "-5",
                "a",
                "1-2-3",
                "+5",
                "99999999999",
                "",
            ],
            &[json!(80), json!(0), json!(65535), json!(65536), json!(-1)],
        );
        agree::<PortK>(
            &["22", "65535", "0", "65536", "22-23", "x"],
            &[json!(22), json!(0), json!(70000)],
        );
        agree::<CidrK>(
            &[
                "10.1.0.0/16",
                "192.0.2.7",
                "0.0.0.0/0",
                "10.0.0.0/32",
                "10.0.0.0/33",
                "256.0.0.0/8",
                "10.0.0/8",
                "fd00::/8",
                "2001:db8::1",
                "::/0",
                "fd00::/129",
                "not-a-cidr",
                "10.1.0.0/",
                "",
            ],
            &[json!(10)],
        );
        agree::<ProtocolK>(
            &["tcp", "udp", "icmp", "any", "sctp", "TCP", ""],
            &[json!(6)],
        );
        agree::<DirectionK>(&["egress", "ingress", "both", "out", ""], &[]);
        agree::<DurationK>(
            &[
                "0",
                "0s",
                "250ms",
                "30s",
                "5m",
                "1h 30m",
                "1h30m",
                "1.5h",
                "2 days",
                "7weeks",
                "11M",
                "163µs",
                "30",
                "s",
                "5 parsecs",
                "-1s",
                "",
            ],
            &[json!(30), json!(0)],
        );
        agree::<PositiveDurationK>(
            &["1ms", "10s", "0.5s", "0s", "0", "0ms 0s", "5"],
            &[json!(5)],
        );
        agree::<RateK>(
            &[
                "100bit", "500kbit", "10mbit", "1gbit", "1tbit", "100bps", "1kbps", "1mbps",
                "10 Mbit", "1.5mbit", "1000", "0bit", "1tbps", "mbit", "",
            ],
            &[json!(1000)],
        );
        agree::<ErrnoK>(
            &[
                "ECONNREFUSED",
                "EIO",
                "EWOULDBLOCK",
                "111",
                "1",
                "4095",
                "4096",
                "0",
                "-5",
                "ENOSUCH",
                "",
            ],
            &[json!(111), json!(4095), json!(0), json!(4096), json!(-1)],
        );
        agree::<InterfaceK>(
            &[
                "eth0",
                "veth-demo-a",
                "a.b",
                &"e".repeat(15),
                &"e".repeat(16),
                "eth0/1",
                "eth0:1",
                "my if",
                ".",
                "..",
                "",
            ],
            &[],
        );
        agree::<NetnsK>(
            &["edge-app", "chaos-demo-a", "a/b", ".", "..", "a b", ""],
            &[],
        );
        agree::<UnitK>(
            &[
                "db-client.service",
                "user@1000.service",
                "a.slice",
                "init.scope",
                ".service",
                "db",
                "db client.service",
                "x.timer",
            ],
            &[],
        );
        agree::<CgroupK>(
            &[
                "/",
                "/system.slice/db.service",
                "/a/./b",
                "/a/../b",
                "/..",
                "relative",
                "/a\u{1}b",
                "/a.b/..c",
            ],
            &[],
        );
        agree::<SyscallNameK>(
            &["connect", "openat", "epoll_wait", "Connect", "con-nect", ""],
            &[],
        );
        agree::<CommK>(
            &["nginx", "postgres: walwr", &"c".repeat(16), "a\tb", ""],
            &[],
        );
        agree::<PidK>(
            &["2", "42", "1", "0", "-3", "x", ""],
            &[json!(2), json!(42), json!(1), json!(0)],
        );
        agree::<HttpStatusK>(
            &["200", "100", "599", "600", "99", "2xx"],
            &[json!(204), json!(99), json!(600)],
        );
        agree::<CountK>(
            &["1", "1000", "0", "-1", "x"],
            &[json!(1), json!(0), json!(-1)],
        );
        agree::<ApiVersionK>(&["chaos-agent/v1", "chaos-agent/v2", ""], &[json!(1)]);
        agree::<KindK>(&["FaultPolicy", "Policy"], &[]);
        agree::<ModeK>(&["enforce", "shadow", "Shadow", "dry-run", ""], &[json!(1)]);
        agree::<BurstK>(
            &[
                "8",
                "1",
                "2.5",
                "1000000",
                "1000000.0",
                "007",
                "0",
                "0.5",
                "1000001",
                "1e2",
                "inf",
                ".5",
                "5.",
                "-2",
                "",
            ],
            &[
                json!(8),
                json!(2.5),
                json!(1),
                json!(0.5),
                json!(1_000_001),
                json!(0),
            ],
        );
    }

    /// Where the loader is lenient, the schema asks for the usual spelling
    /// (errno names in capitals, ports without leading zeros); what needs
    /// arithmetic only the loader refuses (a port range's ends in order,
    /// host bits of a prefix, durations of more than 365 days).
    #[test]
    fn where_schema_and_loader_differ() {
        assert!(DurationK::parse("400d").is_err());
        assert!(accepts::<DurationK>(&json!("400d")));
        assert!(ErrnoK::parse("econnrefused").is_ok());
        assert!(!accepts::<ErrnoK>(&json!("econnrefused")));
        assert!(PortRangeK::parse("080").is_ok());
        assert!(!accepts::<PortRangeK>(&json!("080")));
        assert!(PortRangeK::parse("10-5").is_err());
        assert!(accepts::<PortRangeK>(&json!("10-5")));
        assert!(CidrK::parse("10.0.0.1/8").is_err());
        assert!(accepts::<CidrK>(&json!("10.0.0.1/8")));
    }
}
